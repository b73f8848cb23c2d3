"""The `clip` group: the CLIP score of the raw caption and of every candidate (docs/formats.md#scores)."""
from __future__ import annotations

import dataclasses
import json

from recaption.annotators.base import (Annotator, Column, Option, RuleKind, check_model_path, model_identity,
                                       is_pixels, on_device, recipe_section)

RECIPE_KEYS = {"model", "pretrained", "dtype", "batch_size", "save_embeddings"}
EMBEDDINGS = "float16"  # what the settings record when the image embeddings are kept (recaption.io.embeddings)


def clip_scorer(ctx, cfg):
    """The worker's CLIP scorer for a config: one per model, whichever annotator asks first."""
    model = dataclasses.asdict(on_device(cfg, ctx.device))
    model.pop("save_embeddings", None)  # what annotate keeps is no part of the model
    key = ("clip", json.dumps(model, sort_keys=True))

    def build():
        from recaption.scoring.clip import ClipScorer

        return ClipScorer(on_device(cfg, ctx.device))

    return ctx.shared(key, build)


def embed(scorer, batch, idx):
    """Image embeddings of rows `idx`: from the batch's prepared inputs where they are exactly
    these rows, else sample by sample; made once per batch, rows and model where the batch keeps a
    `memo` (the `clip` group of every caption group, and the LAION heads, read the same embeddings)."""
    memo = getattr(batch, "memo", None)
    if memo is None:
        return _embed(scorer, batch, idx)
    key = (id(scorer), tuple(idx))
    if key not in memo:
        memo[key] = _embed(scorer, batch, idx)
    return memo[key]


def _embed(scorer, batch, idx):
    prepared = batch.batched(scorer, idx)
    if prepared is None:
        emb = scorer.encode_images(batch.inputs(scorer, idx))
    else:
        emb = scorer.encode_pixels(scorer.prepare_pixels(prepared) if is_pixels(prepared) else prepared)
    scorer.last_embedding = (batch, tuple(idx), emb)
    return emb


class Clip(Annotator):
    """`clip_raw` and `clip_captions`: one image embedding per sample, every text of a batch in one
    call; with `--save-embeddings`, those embeddings kept per shard beside the annotation file
    (`recaption.io.embeddings`, rows aligned with it)."""

    name = "clip"
    columns = (Column("clip_raw", "float32"), Column("clip_captions", "list<float32>", []))
    after = ("captions",)
    add_hint = "recaption score INPUT -a ANN"
    options = (
        Option("clip_model", str, "ViT-B-32", "open_clip name, hf-hub:org/repo or local-dir:/path"),
        Option("clip_pretrained", str, "openai", "pretrained tag or local checkpoint file"),
        Option("no_clip", bool, False, "skip CLIP scores", flags=("--no-clip",)),
        Option("save_embeddings", bool, False, "keep the CLIP image embeddings (float16, clip-retrieval's layout) in "
                                               "ANN/embeddings/, rows aligned with each annotation file: what "
                                               "mix --dedup embedding=COSINE and --decontaminate's embedding rule "
                                               "read"),
    )
    # the CLIP floors of LAION-5B (docs/formats.md#filters): they read the fixed clip_raw column
    rules = (
        RuleKind("min-clip-raw", ("clip_raw",), float, "no clip_raw score", "CLIP score of the alt-text >= X",
                 test="recaption.annotators.clip:min_clip_raw"),
        RuleKind("min-clip-raw-en", ("clip_raw", "lang"), float, "no clip_raw score",
                 "CLIP score of the alt-text >= X where its language is en (other rows pass)", group="metrics",
                 test="recaption.annotators.clip:min_clip_raw_en"),
        RuleKind("min-clip-raw-other", ("clip_raw", "lang"), float, "no clip_raw score",
                 "CLIP score of the alt-text >= X where its language is not en (en rows pass)", group="metrics",
                 test="recaption.annotators.clip:min_clip_raw_other"),
    )

    @classmethod
    def configure(cls, values: dict, others: dict):
        """A `ClipConfig`, or None with --no-clip; the captioner's --dtype applies too."""
        from recaption.scoring.clip import ClipConfig

        if values.get("no_clip"):
            return None
        return ClipConfig(model=values.get("clip_model") or "ViT-B-32",
                          pretrained=values.get("clip_pretrained", "openai"), dtype=values.get("dtype"),
                          save_embeddings=bool(values.get("save_embeddings")))

    @classmethod
    def from_recipe(cls, recipe: dict, others: dict):
        """`clip: {model, pretrained, dtype, batch_size}` or null."""
        from recaption.scoring.clip import ClipConfig

        c = recipe_section(recipe, "clip", RECIPE_KEYS)
        if c is None:
            return None
        return ClipConfig(model=c.pop("model", "ViT-B-32"), pretrained=c.pop("pretrained", "openai"), **c)

    @classmethod
    def settings(cls, c, run) -> dict:
        """Model, weights and dtype (and the input path where it is not the fast one); `embeddings`
        where they are kept, so a shard whose embedding files are missing is redone."""
        s = model_settings(c) | ({"preprocess": run.preprocess} if run.preprocess != "fast" else {})
        return s | ({"embeddings": EMBEDDINGS} if getattr(c, "save_embeddings", False) else {})

    @classmethod
    def files(cls, settings: dict, ann_dir: str, name: str) -> list[str]:
        """The shard's embedding files, where the settings keep them."""
        from recaption.io import embeddings

        if not settings.get("embeddings"):
            return []
        return [embeddings.npy_url(ann_dir, name), embeddings.metadata_url(ann_dir, name)]

    @classmethod
    def check(cls, c) -> None:
        """The model is an open_clip name, hf-hub: or local-dir: (a bare path is refused with the prefix it
        needs); a local checkpoint or model folder must exist."""
        from recaption.scoring.clip import check_model_name

        check_model_name(c.model)
        check_model_path(c.pretrained, "CLIP checkpoint")
        check_model_path(c.model.split(":", 1)[1] if c.model.startswith("local-dir:") else None, "CLIP model folder")

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.scorer = clip_scorer(ctx, config)
        self.kept: dict[int, object] = {}  # id(row) -> its image embedding (float32), while a shard is read
        self.shard: str | None = None

    def image_models(self) -> dict:
        """The CLIP image tower reads pixels."""
        return {"clip": self.scorer}

    def annotate_batch(self, batch) -> None:
        """Score the raw caption and the candidates of every row still ok."""
        idx = batch.live()
        if not idx:
            return
        rows = [batch.rows[i] for i in idx]
        emb = embed(self.scorer, batch, idx)
        raw_s, cand_s = self.scorer.score(emb, [r["raw_caption"] for r in rows], [r["captions"] or [] for r in rows])
        for r, a, b in zip(rows, raw_s, cand_s):
            r["clip_raw"], r["clip_captions"] = a, b
        if self.config.save_embeddings:
            if batch.shard != self.shard:  # a new shard (one that failed never reached finish_shard)
                self.kept, self.shard = {}, batch.shard
            vectors = emb.float().cpu().numpy()
            for r, v in zip(rows, vectors):
                self.kept[id(r)] = v

    def finish_shard(self, rows: list[dict]) -> None:
        """Write the shard's embeddings (rows aligned with the annotation file, zeros where a row
        has none); without --save-embeddings, remove the ones an earlier pass left for it (they
        belong to results this pass replaces)."""
        from recaption.io import embeddings

        kept, self.kept, self.shard = self.kept, {}, None
        name = next((r["shard"] for r in rows), None)
        if name is None or self.ctx.ann_dir is None:
            return
        if not self.config.save_embeddings:
            embeddings.remove(self.ctx.ann_dir, name)
            return
        import numpy as np

        dim = next((len(v) for v in kept.values()), None) or image_dim(self.scorer)
        vectors = np.zeros((len(rows), dim), dtype=np.float32)
        done = np.zeros(len(rows), dtype=bool)
        for i, r in enumerate(rows):
            v = kept.get(id(r))
            if v is not None:
                vectors[i], done[i] = v, True
        embeddings.write(self.ctx.ann_dir, name, vectors, [r["key"] for r in rows], shard=name, embedded=done,
                         settings=model_settings(self.config))


def model_settings(c) -> dict:
    """The model a CLIP config names, as group settings and embedding files record it."""
    return {"model": model_identity(c.model), "pretrained": c.pretrained, "dtype": c.dtype or "auto"}


def image_dim(scorer) -> int:
    """The width of a CLIP model's image embeddings."""
    return int(getattr(scorer.model.visual, "output_dim", 0) or scorer.model.text_projection.shape[1])


# -- the CLIP floors' tests (RuleKind.test): columnar over an annotation table ------------------
def _floor(t, value, scope=None):
    import numpy as np

    from recaption.scoring.blend import score_column

    x = score_column(t["clip_raw"]).astype(np.float64)
    scope = np.ones(t.num_rows, bool) if scope is None else scope
    has = ~np.isnan(x)
    with np.errstate(invalid="ignore"):
        return scope & has & (x < value), scope & ~has, x


def _english(t):
    import pyarrow.compute as pc

    from recaption.io import arrays

    return arrays.bools(pc.equal(t["lang"], "en"))


def min_clip_raw(t, value):
    """`min-clip-raw=X` on every row: (fails, lacks, clip_raw)."""
    return _floor(t, value)


def min_clip_raw_en(t, value):
    """`min-clip-raw-en=X` on the rows whose alt-text is English; the others pass."""
    return _floor(t, value, _english(t))


def min_clip_raw_other(t, value):
    """`min-clip-raw-other=X` on the rows whose alt-text is not English; the English ones pass."""
    return _floor(t, value, ~_english(t))
