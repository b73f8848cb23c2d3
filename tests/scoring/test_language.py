"""Caption language with the real bundled fastText lid.176 model (DataComp's basic filtering)."""
from recaption.scoring.language import LanguageId


def test_language_of_captions_in_one_batch():
    lid = LanguageId()
    labels, probs = lid.predict(["a dog running on the beach at sunset", "un chien qui court sur la plage",
                                 "ein Hund, der am Strand läuft", "un perro corriendo en la playa", None,
                                 "two lines\nof english text here"])
    assert labels == ["en", "fr", "de", "es", None, "en"]
    assert probs[4] is None and all(0 < p <= 1 for i, p in enumerate(probs) if i != 4)
