"""What the LAION tag groups share (`punsafe`, `aesthetic`: one module and one registration each):
a head over the CLIP image embedding (`recaption.scoring.heads`), fed by the pass's own CLIP
forward where the pass runs the CLIP the head was trained on (`clip.embed` keeps a batch's
embedding on the shared scorer), else by its own CLIP forward on the same decode."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from recaption.annotators.base import Annotator, Column, Hist, Option, RuleKind, check_model_path, model_identity
from recaption.errors import RecaptionError


@dataclass
class HeadConfig:
    """A tag head: its declaration, the weights as given, and the CLIP config its input comes from."""

    head: object  # recaption.scoring.heads.Head
    weights: str | None
    clip: object | None = None  # ClipConfig (None: a pixel head)
    dtype: str | None = None
    device: str | None = None


def clip_config_for(head, others: dict, dtype: str | None):
    """The pass's CLIP config where it runs the head's CLIP (so both share one model and one
    forward), else one of its own for that CLIP."""
    from recaption.scoring.clip import ClipConfig

    main = others.get("clip")
    if main is not None and main.model == head.clip_model and (
            main.model.startswith(("local-dir:", "hf-hub:")) or main.pretrained == head.clip_pretrained):
        return dataclasses.replace(main, save_embeddings=False)
    return ClipConfig(model=head.clip_model, pretrained=head.clip_pretrained, dtype=dtype)


def head_options(tag: str, default_head: str, what: str) -> tuple[Option, ...]:
    """A tag group's switch, head and weights, as options named after the tag."""
    return (
        Option(tag, bool, False, what),
        Option(f"{tag}_head", str, default_head, f"the {tag} head: a name from `recaption models` or a head "
               "declaration file (YAML); another than the default computes the tag"),
        Option(f"{tag}_weights", str, None, f"the {tag} head's weights: a file, or hf-hub:ORG/REPO[/FILE] (default: "
               "the declared file beside a declaration file); giving them computes the tag"),
    )


def tag_rule(name: str, tag: str, op: str, help: str) -> RuleKind:
    """A plain min/max rule on a tag column (its group must be in the file)."""
    return RuleKind(name, (tag,), float, f"no {tag}", help, op=op, column=tag, group=tag)


class ClipHead(Annotator):
    """One tag column from a head over the CLIP image embedding; subclasses declare the tag."""

    tag: ClassVar[str] = ""
    default_head: ClassVar[str] = ""
    timer = ""

    @classmethod
    def configure(cls, values: dict, others: dict):
        """On with its switch, or with a head or weights given; None otherwise."""
        from recaption.scoring import heads

        head_ref = values.get(f"{cls.tag}_head")
        weights = values.get(f"{cls.tag}_weights")
        on = values.get(cls.tag) or weights or (head_ref and head_ref != cls.default_head)
        if not on:
            return None
        head = heads.resolve(head_ref or cls.default_head, cls.tag)
        if head.input != "clip":
            raise RecaptionError(f"head {head.name} reads pixels, not a CLIP embedding: it cannot give {cls.tag}")
        dtype = values.get("dtype")
        return HeadConfig(head, weights, clip_config_for(head, others, dtype), dtype)

    @classmethod
    def from_recipe(cls, recipe: dict, others: dict):
        """`TAG: {head, weights}` or `TAG: true` (the default head, its weights given by --set)."""
        from recaption.annotators.base import recipe_section

        section = recipe.get(cls.tag)
        if not section:
            return None
        section = {} if section is True else recipe_section(recipe, cls.tag, {"head", "weights"})
        return cls.configure({cls.tag: True, f"{cls.tag}_head": section.get("head"),
                              f"{cls.tag}_weights": section.get("weights")}, others)

    @classmethod
    def settings(cls, c, run) -> dict:
        """The head (name, arch, its CLIP and input, the output read), its weights (path and sha256)
        and the CLIP's dtype: what a tag column records of what produced it."""
        from recaption.scoring import heads

        path = heads.weights_path(c.head, c.weights)
        s = c.head.record() | {"weights": model_identity(c.weights) if c.weights and c.weights.startswith("hf-hub:")
                                           else model_identity(path), "sha256": heads.sha256(path)}
        s["clip_settings"] = {"model": model_identity(c.clip.model), "pretrained": c.clip.pretrained,
                              "dtype": c.clip.dtype or "auto"}
        return s | ({"preprocess": run.preprocess} if run.preprocess != "fast" else {})

    @classmethod
    def check(cls, c) -> None:
        """The weights exist and fit the head's architecture; its CLIP is a known model."""
        from recaption.scoring import heads
        from recaption.scoring.clip import check_model_name
        from recaption.scoring.heads import arch

        path = heads.weights_path(c.head, c.weights)
        arch.load(c.head, path)
        check_model_name(c.clip.model, f"the CLIP model of head {c.head.name}")
        check_model_path(c.clip.pretrained, f"CLIP checkpoint of head {c.head.name}")

    def __init__(self, config, ctx):
        from recaption.annotators.clip import clip_scorer
        from recaption.scoring import heads
        from recaption.scoring.heads import arch

        super().__init__(config, ctx)
        self.scorer = clip_scorer(ctx, config.clip)
        self.model = arch.load(config.head, heads.weights_path(config.head, config.weights), self.scorer.device)
        width = _image_dim(self.scorer)
        if width != config.head.dim:
            raise RecaptionError(f"head {config.head.name} takes {config.head.dim}-wide embeddings, but "
                                 f"{self.scorer.id} gives {width}")

    def image_models(self) -> dict:
        """The head's CLIP image tower (the pass's own where it is the same model)."""
        return {"clip": self.scorer}

    def scores(self, emb):
        """Tag values of L2-normalised embeddings [N, d] (float32)."""
        import torch

        from recaption.scoring.heads import arch

        with torch.inference_mode():
            out = self.model(emb.to(self.scorer.device, torch.float32))
        return arch.scores(self.config.head, out)

    def annotate_batch(self, batch) -> None:
        """The tag of every row still ok, from the (shared) CLIP embedding of its image."""
        from recaption.annotators.clip import embed

        idx = batch.live()
        if not idx:
            return
        for i, v in zip(idx, self.scores(embed(self.scorer, batch, idx)).tolist()):
            batch.rows[i][self.tag] = v


def _image_dim(scorer) -> int:
    from recaption.annotators.clip import image_dim

    return image_dim(scorer)


def columns_for(tag: str) -> tuple[Column, ...]:
    """A tag group's one float32 column."""
    return (Column(tag, "float32"),)


def hist_for(tag: str, bins: tuple, label: str) -> tuple[Hist, ...]:
    """A tag's histogram on fixed bins."""
    return (Hist(tag, tag, bins, label=label),)
