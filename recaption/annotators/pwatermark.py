"""The `pwatermark` group: LAION-5B's watermark probability, from LAION-5B-WatermarkDetection (an
efficientnet_b3 over the 256x256 image; docs/formats.md#tag-columns)."""
from __future__ import annotations

from dataclasses import dataclass

from recaption.annotators.base import Option, is_pixels, model_identity
from recaption.annotators.clip_heads import PixelHead, columns_for, hist_for, tag_rule

HEAD = "laion-watermark-v1"


@dataclass
class WatermarkConfig:
    """The watermark head's declaration and its weights as given."""

    head: object
    weights: str | None
    device: str | None = None


class _Input:
    """The image model the decoder feeds: the head's resize and ImageNet normalisation."""

    def __init__(self, head):
        self.head = head
        self.image_size = max(head.pixels["resize"])

    def pixel_spec(self):
        """The fast path's input: squashed to 256x256, bilinear, left as uint8."""
        from recaption.io.pixels import PixelSpec

        p = self.head.pixels
        return PixelSpec("squash", tuple(p["resize"]), interpolation=p.get("interpolation", "bilinear"),
                         mean=tuple(p["mean"]), std=tuple(p["std"]))

    def prepare(self, images):
        """PIL images through the repository's own transform (Resize, ToTensor, Normalize), or
        per-sample uint8 pixels stacked."""
        import torch
        from torchvision import transforms as T

        from recaption.io.pixels import is_pixels as all_pixels

        if all_pixels(images):
            return torch.stack(list(images))
        p = self.head.pixels
        tf = T.Compose([T.Resize(tuple(p["resize"])), T.ToTensor(), T.Normalize(p["mean"], p["std"])])
        return torch.stack([tf(im) for im in images])


class Pwatermark(PixelHead):
    """`pwatermark`: LAION's probability that an image carries a watermark (0-1)."""

    name = tag = "pwatermark"
    columns = columns_for("pwatermark")
    options = (Option("pwatermark", bool, False, "LAION's watermark probability (pwatermark): efficientnet_b3 over "
                                                 "the 256x256 image"),
               Option("pwatermark_weights", str, None, "the watermark head's weights (watermark_model_v1.pt): a file "
                      "or hf-hub:ORG/REPO[/FILE]; giving them computes the tag"))
    hists = hist_for("pwatermark", (0.0, 1.0, 0.05), "pwatermark (LAION watermark)")
    rules = (tag_rule("max-pwatermark", "pwatermark", "max", "pwatermark <= X (LAION's watermark probability)"),)
    add_hint = "recaption score INPUT -a ANN --pwatermark --pwatermark-weights FILE"

    @classmethod
    def configure(cls, values: dict, others: dict):
        """On with --pwatermark or with its weights given."""
        from recaption.scoring import heads

        if not (values.get("pwatermark") or values.get("pwatermark_weights")):
            return None
        return WatermarkConfig(heads.get(HEAD), values.get("pwatermark_weights"))

    @classmethod
    def from_recipe(cls, recipe: dict, others: dict):
        """`pwatermark: {weights}` or `pwatermark: true`."""
        from recaption.annotators.base import recipe_section

        section = recipe.get("pwatermark")
        if not section:
            return None
        section = {} if section is True else recipe_section(recipe, "pwatermark", {"weights"})
        return cls.configure({"pwatermark": True, "pwatermark_weights": section.get("weights")}, others)

    @classmethod
    def settings(cls, c, run) -> dict:
        """The head, its weights (path and sha256) and the input path where it is not the fast one."""
        from recaption.scoring import heads

        path = heads.weights_path(c.head, c.weights)
        s = c.head.record() | {"weights": model_identity(c.weights if c.weights and c.weights.startswith("hf-hub:")
                                                         else path), "sha256": heads.sha256(path)}
        return s | ({"preprocess": run.preprocess} if run.preprocess != "fast" else {})

    @classmethod
    def check(cls, c) -> None:
        """The weights exist and fit the architecture."""
        from recaption.scoring import heads
        from recaption.scoring.heads import arch

        arch.load(c.head, heads.weights_path(c.head, c.weights))

    def __init__(self, config, ctx):
        from recaption.models import resolve_device
        from recaption.scoring import heads
        from recaption.scoring.heads import arch

        super().__init__(config, ctx)
        self.device = resolve_device(config.device or ctx.device)
        self.model = arch.load(config.head, heads.weights_path(config.head, config.weights), self.device)
        self.input = _Input(config.head)

    def probabilities(self, batch, idx, x):
        """The watermark probability of rows `idx` from their 256x256 input."""
        import torch

        from recaption.io.pixels import normalize
        from recaption.scoring.heads import arch

        x = x.to(self.device)
        if is_pixels(x):
            x = normalize(x, self.input.pixel_spec())
        with torch.inference_mode():
            return arch.scores(self.config.head, self.model(x.float()))
