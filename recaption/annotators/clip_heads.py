"""What the LAION tag groups share (one module and one registration each).

`ClipHead` (`punsafe`, `aesthetic`): a head over the CLIP image embedding (`recaption.scoring.heads`),
fed by the pass's own CLIP forward where the pass runs the CLIP the head was trained on (`clip.embed`
keeps a batch's embedding on the shared scorer), else by its own CLIP forward on the same decode,
or, with `--TAG-from-embeddings`, by the embeddings an earlier pass saved (`--save-embeddings`,
`recaption.io.embeddings`): no image is read then. A subclass declares its tag, default head, help,
bins and rule; its columns, options, histogram, rule and hint follow from them.

`PixelHead` (`pwatermark`, `open_nsfw`): a network over the shared decode's pixels, one probability
per image; a subclass says how a batch's pixels become probabilities."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from recaption.annotators.base import (Annotator, Column, Hist, Option, RuleKind, check_model_path, model_identity,
                                       prepared)
from recaption.errors import RecaptionError


@dataclass
class HeadConfig:
    """A tag head: its declaration, the weights as given, and the CLIP config its input comes from."""

    head: object  # recaption.scoring.heads.Head
    weights: str | None
    clip: object | None = None  # ClipConfig (None: a pixel head)
    dtype: str | None = None
    device: str | None = None
    from_embeddings: bool = False  # read the folder's saved embeddings, not the images


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
    """A tag group's switch, head, weights and input, as options named after the tag."""
    return (
        Option(tag, bool, False, what),
        Option(f"{tag}_head", str, default_head, f"the {tag} head: a name from `recaption models` or a head "
               "declaration file (YAML); another than the default computes the tag"),
        Option(f"{tag}_weights", str, None, f"the {tag} head's weights: a file, or hf-hub:ORG/REPO[/FILE] (default: "
               "the declared file beside a declaration file); giving them computes the tag"),
        Option(f"{tag}_from_embeddings", bool, False, f"compute {tag} from the CLIP embeddings an earlier pass saved "
               "in ANN/embeddings/ (--save-embeddings): no image is read; the head's CLIP must be theirs"),
    )


def tag_rule(name: str, tag: str, op: str, help: str) -> RuleKind:
    """A plain min/max rule on a tag column (its group must be in the file)."""
    return RuleKind(name, (tag,), float, f"no {tag}", help, op=op, column=tag, group=tag)


class ClipHead(Annotator):
    """One tag column from a head over the CLIP image embedding; subclasses declare the tag."""

    tag: ClassVar[str] = ""
    default_head: ClassVar[str] = ""
    what: ClassVar[str] = ""  # the switch's help
    bins: ClassVar[tuple] = (0.0, 1.0, 0.05)  # the report's histogram
    label: ClassVar[str] = ""
    rule: ClassVar[tuple] = ()  # (name, op, help) of its min/max rule
    timer = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.tag:  # the declarations a tag implies (a subclass may still set its own)
            t = cls.tag
            cls.name = cls.__dict__.get("name") or t
            cls.columns = cls.__dict__.get("columns") or columns_for(t)
            cls.options = cls.__dict__.get("options") or head_options(t, cls.default_head, cls.what)
            cls.hists = cls.__dict__.get("hists") or hist_for(t, cls.bins, cls.label or t)
            cls.rules = cls.__dict__.get("rules") or ((tag_rule(cls.rule[0], t, cls.rule[1], cls.rule[2]),)
                                                      if cls.rule else ())
            cls.add_hint = cls.__dict__.get("add_hint") or f"recaption score INPUT -a ANN --{t} --{t}-weights FILE"

    @classmethod
    def configure(cls, values: dict, others: dict):
        """On with its switch, or with a head or weights given; None otherwise."""
        from recaption.scoring import heads

        head_ref = values.get(f"{cls.tag}_head")
        weights = values.get(f"{cls.tag}_weights")
        saved = bool(values.get(f"{cls.tag}_from_embeddings"))
        on = values.get(cls.tag) or weights or saved or (head_ref and head_ref != cls.default_head)
        if not on:
            return None
        head = heads.resolve(head_ref or cls.default_head, cls.tag)
        if head.input != "clip":
            raise RecaptionError(f"head {head.name} reads pixels, not a CLIP embedding: it cannot give {cls.tag}")
        dtype = values.get("dtype")
        if saved:
            main = others.get("clip")
            if main is not None and not main.save_embeddings:  # its pass removes the files the head reads
                raise RecaptionError(f"--{cls.tag.replace('_', '-')}-from-embeddings reads the embeddings an "
                                     "earlier pass saved, which this pass's CLIP scores would remove: add "
                                     "--no-clip (or --save-embeddings)")
            from recaption.scoring.clip import ClipConfig

            clip = ClipConfig(model=head.clip_model, pretrained=head.clip_pretrained, dtype=dtype)
            return HeadConfig(head, weights, clip, dtype, from_embeddings=True)
        return HeadConfig(head, weights, clip_config_for(head, others, dtype), dtype)

    @classmethod
    def from_recipe(cls, recipe: dict, others: dict):
        """`TAG: {head, weights}` or `TAG: true` (the default head, its weights given by --set)."""
        from recaption.annotators.base import recipe_section

        section = recipe.get(cls.tag)
        if not section:
            return None
        section = {} if section is True else recipe_section(recipe, cls.tag, {"head", "weights", "from_embeddings"})
        return cls.configure({cls.tag: True, f"{cls.tag}_head": section.get("head"),
                              f"{cls.tag}_weights": section.get("weights"),
                              f"{cls.tag}_from_embeddings": section.get("from_embeddings")}, others)

    @classmethod
    def for_folder(cls, c, ann_dir: str):
        """From saved embeddings: the folder holds some, made by the head's CLIP (one line naming both
        otherwise); the tag then records that CLIP as the embeddings' footer does, so its record is
        the one the pass that saved them would have written."""
        if not getattr(c, "from_embeddings", False):
            return c
        from recaption.io import embeddings
        from recaption.io.atomic import join, listdir
        from recaption.scoring.clip import ClipConfig

        names = sorted(n for n in listdir(join(ann_dir, f"{embeddings.FOLDER}/metadata"))
                       if n.startswith("metadata_") and n.endswith(".parquet"))
        if not names:
            raise RecaptionError(f"--{cls.tag}-from-embeddings: {ann_dir} holds no saved embeddings "
                                 f"({embeddings.FOLDER}/; annotate with --save-embeddings first)")
        saved = saved_clip(c.head, embeddings.settings(ann_dir, names[0][len("metadata_"):-len(".parquet")]))
        dtype = saved.get("dtype")
        clip = ClipConfig(model=saved["model"], pretrained=saved.get("pretrained"),
                          dtype=None if dtype in (None, "auto") else dtype)
        return dataclasses.replace(c, clip=clip, dtype=clip.dtype)

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
        from recaption.models import resolve_device
        from recaption.scoring import heads
        from recaption.scoring.heads import arch

        super().__init__(config, ctx)
        if config.from_embeddings:  # no CLIP, no image: the head alone, in finish_shard
            self.reads_images, self.scorer = False, None
            self.device = resolve_device(config.device or ctx.device)
            self.model = arch.load(config.head, heads.weights_path(config.head, config.weights), self.device)
            return
        self.scorer = clip_scorer(ctx, config.clip)
        self.device = self.scorer.device
        self.model = arch.load(config.head, heads.weights_path(config.head, config.weights), self.scorer.device)
        width = _image_dim(self.scorer)
        if width != config.head.dim:
            raise RecaptionError(f"head {config.head.name} takes {config.head.dim}-wide embeddings, but "
                                 f"{self.scorer.id} gives {width}")

    def image_models(self) -> dict:
        """The head's CLIP image tower (the pass's own where it is the same model)."""
        return {} if self.scorer is None else {"clip": self.scorer}

    def scores(self, emb):
        """Tag values of L2-normalised embeddings [N, d] (float32)."""
        import torch

        from recaption.scoring.heads import arch

        with torch.inference_mode():
            out = self.model(emb.to(self.device, torch.float32))
        return arch.scores(self.config.head, out)

    def annotate_batch(self, batch) -> None:
        """The tag of every row still ok, from the (shared) CLIP embedding of its image."""
        from recaption.annotators.clip import embed

        idx = batch.live()
        if not idx or self.scorer is None:
            return
        fill(batch.rows, idx, self.tag, self.scores(embed(self.scorer, batch, idx)))

    def finish_shard(self, rows: list[dict]) -> None:
        """From saved embeddings: the tag of every row that is ok and was embedded, the files checked
        to be the annotation file's rows (same count, same keys) and made by the head's CLIP."""
        if self.scorer is not None or not rows:
            return
        import numpy as np
        import torch

        from recaption.io import embeddings

        name, ann_dir = rows[0]["shard"], self.ctx.ann_dir
        where = f"{ann_dir}/{embeddings.FOLDER} ({name})"
        if not embeddings.has(ann_dir, name):
            raise RecaptionError(f"{where}: no saved embeddings for this shard (annotate it with --save-embeddings)")
        saved_clip(self.config.head, embeddings.settings(ann_dir, name))
        vectors, meta = embeddings.read(ann_dir, name)
        if len(vectors) != len(rows) or meta.column("key").to_pylist() != [r["key"] for r in rows]:
            raise RecaptionError(f"{where}: the embeddings' rows are not the annotation file's ({len(vectors)} vs "
                                 f"{len(rows)} rows, or other keys): save them again with the annotation file")
        if vectors.shape[1] != self.config.head.dim:
            raise RecaptionError(f"head {self.config.head.name} takes {self.config.head.dim}-wide embeddings, but "
                                 f"{where} holds {vectors.shape[1]}-wide ones")
        ok = np.asarray(meta.column("embedded").to_numpy(zero_copy_only=False), bool)
        ok &= np.array([r["status"] == "ok" for r in rows], bool)
        idx = np.flatnonzero(ok).tolist()
        if idx:
            fill(rows, idx, self.tag, self.scores(torch.from_numpy(np.asarray(vectors[ok], np.float32))))


def saved_clip(head, footer: dict) -> dict:
    """The CLIP that saved embeddings (their footer's settings), refused in one line naming both where
    it is not the head's: the head's scores mean nothing over another model's embeddings."""
    saved = footer.get("settings") or {}
    model, pretrained = saved.get("model"), saved.get("pretrained")
    same = model == model_identity(head.clip_model) and (
        str(model).startswith(("local-dir:", "hf-hub:")) or pretrained == head.clip_pretrained)
    if not same:
        raise RecaptionError(f"head {head.name} reads {head.clip_id()} embeddings, but the saved ones were made by "
                             f"{model if not pretrained else f'{model}/{pretrained}'}: choose a head over that CLIP, "
                             "or save embeddings of the head's")
    return saved


def fill(rows: list[dict], idx, column: str, values) -> None:
    """Each row of `idx` gets its value (a tensor or array aligned with `idx`) under `column`."""
    for i, v in zip(idx, values.tolist()):
        rows[i][column] = v


def _image_dim(scorer) -> int:
    from recaption.annotators.clip import image_dim

    return image_dim(scorer)


def columns_for(tag: str) -> tuple[Column, ...]:
    """A tag group's one float32 column."""
    return (Column(tag, "float32"),)


def hist_for(tag: str, bins: tuple, label: str) -> tuple[Hist, ...]:
    """A tag's histogram on fixed bins."""
    return (Hist(tag, tag, bins, label=label),)


class PixelHead(Annotator):
    """One tag column from a network over the shared decode's pixels (`self.input`, its image model);
    subclasses set `tag` and turn a batch's pixels into probabilities (`probabilities`)."""

    tag: ClassVar[str] = ""

    def image_models(self) -> dict:
        """Its pixels come from the shared decode."""
        return {"pixels": self.input}

    def annotate_batch(self, batch) -> None:
        """The probability of every row still ok: the batch's pixels as one tensor where they are
        exactly its decoded samples, else its input's `prepare` over the rows' own inputs."""
        idx = batch.live()
        if not idx:
            return
        fill(batch.rows, idx, self.tag, self.probabilities(batch, idx, prepared(batch, self.input, idx)))

    def probabilities(self, batch, idx: list[int], x):
        """The tag of rows `idx` from their prepared input `x` (an array or tensor aligned with idx)."""
        raise NotImplementedError
