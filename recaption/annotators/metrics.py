"""The `metrics` group: what the published filters test (DataComp basic filtering, LAION-5B), measured
while a shard is read: caption words and characters, language, the original and stored image
sizes, image bytes. Cheap, so every pass computes it."""
from __future__ import annotations

import os

from recaption.annotators.base import Annotator, Column, Hist, Option, RuleKind, model_identity
from recaption.errors import RecaptionError

SIZE = ("original_width", "original_height", "width", "height")


def _int(x) -> int | None:
    try:
        v = int(x)
    except (TypeError, ValueError):
        return None
    return v if 0 <= v < 2**31 else None


def sample_metrics(rec, size: tuple[int, int] | None) -> dict:
    """Metrics of one read sample; `size` is its stored image's (width, height), None if undecodable."""
    raw = rec.raw_caption
    meta = rec.meta or {}
    return {
        "caption_words": len(raw.split()) if raw is not None else None,
        "caption_chars": len(raw) if raw is not None else None,
        "original_width": _int(meta.get("original_width")),
        "original_height": _int(meta.get("original_height")),
        "width": size[0] if size else None,
        "height": size[1] if size else None,
        "image_bytes": len(rec.image_bytes) if rec.image_field else None,
    }


class Metrics(Annotator):
    """Per-sample filter metrics; the language from fastText lid.176, one model call per batch."""

    name = "metrics"
    always = True
    columns = (
        Column("lang", "string"),  # fastText lid.176 top-1 label of the raw caption, e.g. "en"
        Column("lang_prob", "float32"),
        Column("caption_words", "int32"),  # whitespace-separated words of the raw caption
        Column("caption_chars", "int32"),
        Column("original_width", "int32"),  # img2dataset's original size, from the sample json
        Column("original_height", "int32"),
        Column("width", "int32"),  # the stored image's own size, from its header
        Column("height", "int32"),
        Column("image_bytes", "int64"),
    )
    add_hint = "recaption score INPUT -a ANN (with --no-clip --no-sieve: metrics only)"
    options = (
        Option("lang_model", str, None, "fastText lid.176 model for caption language (default: the bundled "
                                        "lid.176.ftz; the full lid.176.bin reproduces DataComp exactly)"),
    )
    hists = (Hist("chars", "caption_chars", (0, 300, 5), label="raw"),
             Hist("kb", "image_bytes", (0, 200, 2), label="image KB", scale=1024))
    rules = (
        RuleKind("english", ("lang",), None, "no alt-text", "top-1 language of the alt-text is en (fastText lid.176)",
                 op="in", column="lang", group="metrics", fixed="en"),
        RuleKind("lang", ("lang",), str, "no alt-text",
                 "top-1 language of the alt-text is one of these codes, e.g. lang=en,de",
                 op="in", column="lang", group="metrics", metavar="en,de"),
        RuleKind("min-words", ("caption_words",), int, "no alt-text",
                 "alt-text has at least N whitespace-separated words",
                 op="min", column="caption_words", group="metrics"),
        RuleKind("min-chars", ("caption_chars",), int, "no alt-text", "alt-text has at least N characters",
                 op="min", column="caption_chars", group="metrics"),
        RuleKind("min-side", SIZE, int, "no image size",
                 "shorter image side >= N px (original size where recorded, else stored)", group="metrics",
                 metavar="PX", test="recaption.annotators.metrics:min_side"),
        RuleKind("max-aspect", SIZE, float, "no image size",
                 "longer side / shorter side <= X (same sizes as min-side)", group="metrics",
                 test="recaption.annotators.metrics:max_aspect", sign=">"),
        RuleKind("min-image-bytes", ("image_bytes",), int, "no image", "stored image file has at least N bytes",
                 op="min", column="image_bytes", group="metrics"),
    )

    @classmethod
    def settings(cls, config, run) -> dict:
        """The language model (the bundled one by name)."""
        from recaption.scoring import language

        return {"lang_model": language.model_identity(model_identity(config.get("lang_model")))}

    @classmethod
    def check(cls, config) -> None:
        """A language model given as a file must exist."""
        path = config.get("lang_model")
        if path is not None and not os.path.exists(path):
            raise RecaptionError(f"language model not found: {path}")

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        from recaption.scoring.language import LanguageId

        self.lid = LanguageId(config.get("lang_model"))

    def annotate_batch(self, batch) -> None:
        """Measure every row of the batch, decodable or not."""
        for i, (r, rec) in enumerate(zip(batch.rows, batch.records)):
            r.update(sample_metrics(rec, batch.source_size(i)))
        labels, probs = self.lid.predict([r["raw_caption"] for r in batch.rows])
        for r, label, p in zip(batch.rows, labels, probs):
            r["lang"], r["lang_prob"] = label, p


# -- the custom filter rules' tests (RuleKind.test): columnar over an annotation table ----------
def sides(t):
    """(shorter side, longer side, known) per row: the original size where the sample's json
    recorded it (img2dataset), else the stored image's, as DataComp's basic filter reads it."""
    import numpy as np

    from recaption.io import arrays

    ow, has_ow = arrays.ints(t["original_width"])
    oh, has_oh = arrays.ints(t["original_height"])
    w, has_w = arrays.ints(t["width"])
    h, has_h = arrays.ints(t["height"])
    orig = has_ow & has_oh
    w, h = np.where(orig, ow, w), np.where(orig, oh, h)
    return np.minimum(w, h), np.maximum(w, h), orig | (has_w & has_h)


def aspect(lo, hi):
    """Longer / shorter side, float64 as DataComp divides; a zero side is infinitely elongated."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        r = hi.astype(np.float64) / lo.astype(np.float64)
    return np.where(lo > 0, r, np.inf)


def min_side(t, value):
    """`min-side=N`: (fails, lacks, the shorter side) per row."""
    lo, _, has = sides(t)
    return has & (lo < value), ~has, lo


def max_aspect(t, value):
    """`max-aspect=X`: (fails, lacks, the aspect ratio) per row."""
    lo, hi, has = sides(t)
    r = aspect(lo, hi)
    return has & (r > value), ~has, r
