"""A toy annotator, as a newcomer would write one: the mean brightness of each image (0-255).

One module; its registration is one call (`recaption.annotators.register(Brightness)`), made by
the tests that use it. Nothing else in recaption knows about it.
"""
from __future__ import annotations

from recaption.annotators.base import Annotator, Column, Hist, Option, RuleKind


def glare(table, value):
    """`max-glare=X`: (fails, lacks, distance from mid-grey) per row of an annotation table."""
    import numpy as np
    import pyarrow as pa

    x = table["brightness"].combine_chunks().cast(pa.float64()).to_numpy(zero_copy_only=False)
    has = ~np.isnan(x)
    off = np.abs(x - 128.0)
    with np.errstate(invalid="ignore"):
        return has & (off > value), ~has, off


class _Pixels:
    """The image model the decoder feeds: a small squashed uint8 image, no normalisation."""

    def __init__(self, size: int):
        self.image_size = size

    def pixel_spec(self):
        """The fast path's input: resized to size x size, left as uint8."""
        from recaption.io.pixels import PixelSpec

        return PixelSpec("squash", (self.image_size, self.image_size), interpolation="bilinear")

    def prepare(self, images):
        """The exact path's input: PIL images (or per-sample uint8 tensors) as one uint8 batch."""
        import numpy as np
        import torch

        out = []
        for im in images:
            if isinstance(im, torch.Tensor):
                out.append(im)
                continue
            a = np.asarray(im.convert("RGB").resize((self.image_size, self.image_size)))
            out.append(torch.from_numpy(a.copy()).permute(2, 0, 1))
        return torch.stack(out)


class Brightness(Annotator):
    """`brightness`: the mean of the image's pixels after shrinking it."""

    name = "brightness"
    columns = (Column("brightness", "float32"),)
    options = (Option("brightness", bool, False, "mean brightness of each image (0-255)"),
               Option("brightness_size", int, 32, "side the image is shrunk to before averaging"))
    hists = (Hist("brightness", "brightness", (0, 256, 4), label="mean brightness"),)
    rules = (RuleKind("min-brightness", ("brightness",), float, "no image", "mean brightness >= X",
                      op="min", column="brightness", group="brightness"),
             # a custom rule: its test is a function of this module, named where the rule is declared
             RuleKind("max-glare", ("brightness",), float, "no image", "mean brightness within X of mid-grey (128)",
                      group="brightness", test="tests.annotators.brightness:glare", sign=">"))
    add_hint = "recaption score INPUT -a ANN --brightness"

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.pixels = _Pixels(config["brightness_size"])

    def image_models(self) -> dict:
        """It reads pixels."""
        return {"pixels": self.pixels}

    def annotate_batch(self, batch) -> None:
        """The mean brightness of every decodable row."""
        idx = batch.live()
        if not idx:
            return
        x = batch.batched(self.pixels, idx)
        if x is None or not hasattr(x, "float"):
            x = self.pixels.prepare(batch.inputs(self.pixels, idx))
        for i, m in zip(idx, x.float().mean(dim=(1, 2, 3)).tolist()):
            batch.rows[i]["brightness"] = m
