"""The `length` group: what the CLIP score of each caption saw (docs/formats.md#long-captions).

CLIP reads its context length in tokens (77 for OpenAI's models) and the score of a longer caption
is the score of its first tokens. This group records every caption's token count under the pass's
CLIP tokenizer beside the context length (read from the model), scores each sentence of a caption
longer than the context against the image embedding the `clip` group already made (one text call
per batch, no image forward of its own), keeps the minimum and mean sentence score, and with
`--clean-floor X` writes the caption without its sentences scoring below X.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from recaption.annotators.base import Annotator, Column, Option, recipe_section
from recaption.errors import RecaptionError

RECIPE_KEYS = {"clean_floor"}


@dataclass
class LengthConfig:
    """The pass's CLIP model and the sentence floor of the cleaned captions (None: none written)."""

    clip: Any
    clean_floor: float | None = None


class Length(Annotator):
    """Token counts of the alt-text and of every candidate; sentence scores of the ones longer than
    the context; cleaned candidates with --clean-floor."""

    name = "length"
    columns = (Column("clip_context", "int32"), Column("clip_raw_tokens", "int32"),
               Column("clip_raw_sent_min", "float32"), Column("clip_raw_sent_mean", "float32"),
               Column("clip_captions_tokens", "list<int32>", []), Column("clip_captions_sent_min", "list<float32>", []),
               Column("clip_captions_sent_mean", "list<float32>", []), Column("captions_clean", "list<string>", []))
    # the alt-text's columns and the context are this (unnamed) group's alone, as clip_raw is clip's
    unnamed_only = ("clip_context", "clip_raw_tokens", "clip_raw_sent_min", "clip_raw_sent_mean")
    after = ("captions", "clip")
    add_hint = "recaption score INPUT -a ANN"
    options = (
        Option("no_clip_length", bool, False, "skip the CLIP token counts and sentence scores of long captions",
               flags=("--no-clip-length",)),
        Option("clean_floor", float, None, "write captions_clean: each candidate longer than the CLIP context "
                                           "without its sentences whose CLIP score is below X"),
    )

    @classmethod
    def configure(cls, values: dict, others: dict):
        """On wherever the pass computes CLIP scores (its model), unless --no-clip-length; a floor
        given where the group does not run is refused (it would change nothing)."""
        floor = _floor(values.get("clean_floor"))
        off = "--no-clip-length" if values.get("no_clip_length") else None
        off = off or ("--no-clip" if others.get("clip") is None else None)
        if off is not None:
            if floor is not None:
                raise RecaptionError(f"--clean-floor needs the CLIP sentence scores, which {off} leaves out")
            return None
        return LengthConfig(others["clip"], floor)

    @classmethod
    def from_recipe(cls, recipe: dict, others: dict):
        """`length: {clean_floor}`; on with the recipe's clip section unless `length: false` or null."""
        if "length" in recipe and not recipe["length"] and recipe["length"] != {}:
            return None
        section = recipe_section({"length": recipe.get("length", True)}, "length", RECIPE_KEYS)
        if "length" in recipe and others.get("clip") is None:  # asked for by name: never silently nothing
            raise RecaptionError("length needs CLIP scores (a clip section) to count tokens and score sentences")
        return cls.configure({"clean_floor": section.get("clean_floor")}, others)

    @classmethod
    def settings(cls, c, run) -> dict:
        """The CLIP model's settings, the sentence rule and the floor (a changed floor is a changed result)."""
        from recaption.annotators.clip import Clip
        from recaption.scoring.sentences import SPLIT

        s = Clip.settings(c.clip, run)
        s.pop("embeddings", None)
        return s | {"split": SPLIT, "clean_floor": c.clean_floor}

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        from recaption.annotators.clip import clip_scorer

        self.scorer = clip_scorer(ctx, config.clip)

    def image_models(self) -> dict:
        """The CLIP image tower (its embedding is the clip group's, shared through the batch)."""
        return {"clip": self.scorer}

    def annotate_batch(self, batch) -> None:
        """Count every caption's tokens; score the sentences of the long ones in one text call."""
        from recaption.annotators.clip import embed

        idx = batch.live()
        if idx:
            self.measure([batch.rows[i] for i in idx], lambda: embed(self.scorer, batch, idx))

    def measure(self, rows: list, embeddings) -> None:
        """Token counts and sentence scores of `rows`' captions; `embeddings()` gives the rows'
        image embeddings, asked for only where a caption is longer than the context (a chained
        group measures its captions at the end of the shard, from the embeddings it kept)."""
        import numpy as np

        from recaption.scoring import sentences

        raw_too = getattr(self, "group", None) is None
        texts, owner, slot = [], [], []  # slot -1: the alt-text, j: candidate j
        for k, r in enumerate(rows):
            if raw_too and r["raw_caption"] is not None:
                texts.append(r["raw_caption"])
                owner.append(k)
                slot.append(-1)
            for j, c in enumerate(r["captions"] or []):
                texts.append(c)
                owner.append(k)
                slot.append(j)
        context = self.scorer.context_length
        counts = self.scorer.token_counts(texts)
        owner_a = np.asarray(owner, np.int64)
        long = np.flatnonzero(counts > context)
        lo = mean = np.full(len(texts), np.nan)
        clean: list = [None] * len(texts)
        if long.size:
            import pyarrow as pa
            import pyarrow.compute as pc

            split = sentences.split(pa.array([texts[i] for i in long], pa.string()))
            lens = pc.list_value_length(split).to_numpy(zero_copy_only=False).astype(np.int64)
            flat = pc.list_flatten(split).to_pylist()
            emb = embeddings()
            t = self.scorer.encode_texts(flat)
            of = np.repeat(owner_a[long], lens)
            sims = (emb[of].to(t.device) * t).sum(-1).cpu().numpy().astype(np.float64)
            lo, mean = np.full(len(texts), np.nan), np.full(len(texts), np.nan)
            lo[long], mean[long] = sentences.reduce(sims, lens)
            if self.config.clean_floor is not None:
                kept = sentences.join_kept(split, sims >= self.config.clean_floor).to_pylist()
                for i, c in zip(long, kept):
                    clean[i] = c
        for r in rows:
            n = len(r["captions"] or [])
            r["clip_captions_tokens"], r["clip_captions_sent_min"] = [0] * n, [None] * n
            r["clip_captions_sent_mean"] = [None] * n
            r["captions_clean"] = [None] * n if self.config.clean_floor is not None else []
            if raw_too:
                r.update(clip_context=context, clip_raw_tokens=None, clip_raw_sent_min=None, clip_raw_sent_mean=None)
        for i, (k, j) in enumerate(zip(owner, slot)):
            r, n, a, b = rows[k], int(counts[i]), _num(lo[i]), _num(mean[i])
            if j < 0:
                r.update(clip_raw_tokens=n, clip_raw_sent_min=a, clip_raw_sent_mean=b)
                continue
            r["clip_captions_tokens"][j], r["clip_captions_sent_min"][j], r["clip_captions_sent_mean"][j] = n, a, b
            if self.config.clean_floor is not None:
                r["captions_clean"][j] = clean[i]


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _floor(value) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise RecaptionError(f"--clean-floor takes a number, got {value!r}") from None
    if not math.isfinite(x):
        raise RecaptionError(f"--clean-floor must be a finite number, got {value!r}")
    return x
