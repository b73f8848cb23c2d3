"""The `rerank` group: candidates re-ranked by a chain of CLIP models (LAION-COCO), the last step's
best being the pick (`recaption.scoring.rerank`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from recaption.annotators.base import Annotator, Column, Option, model_identity
from recaption.annotators.clip import Clip, clip_scorer, embed
from recaption.errors import RecaptionError


@dataclass
class RerankConfig:
    """The chain, and the main CLIP model (a step naming the same model reuses its scores)."""

    steps: tuple
    main: object  # ClipConfig


def _same_clip(model_a, pre_a, model_b, pre_b) -> bool:
    """Same open_clip model; a local-dir:/hf-hub: model carries its weights, so its tag does not count."""
    own = model_a.startswith(("local-dir:", "hf-hub:"))
    return model_a == model_b and (own or pre_a == pre_b)


class Rerank(Annotator):
    """Per step, each candidate still in play scored (null where not), and the pick."""

    name = "rerank"
    columns = (Column("rerank_scores", "list<list<float32>>"), Column("rerank_pick", "int32"))
    after = ("captions",)
    timer = None  # timed per step
    add_hint = "recaption score INPUT -a ANN --rerank MODEL[@PRETRAINED]=K ..."
    options = (
        Option("rerank", str, None, "re-rank candidates with a chain of CLIP models, one step per option: "
               "MODEL[@PRETRAINED]=K keeps the K best (the last K is 1), e.g. --rerank ViT-L-14@openai=5 "
               "--rerank RN50x64@openai=1", multiple=True),
    )

    @classmethod
    def configure(cls, values: dict, others: dict):
        """The chain from the --rerank options (None without them)."""
        from recaption.scoring.rerank import RerankStep

        steps = [RerankStep.parse(x) for x in values.get("rerank") or []]
        return cls._config(steps, others, "re-ranking needs the main CLIP model too (it scores the raw caption "
                                          "and the pick)")

    @classmethod
    def from_recipe(cls, recipe: dict, others: dict):
        """`rerank: [{model, pretrained, top_k}, ...]` (needs the clip section)."""
        from recaption.scoring.rerank import RerankStep

        steps = recipe.get("rerank")
        if not steps:
            return None
        if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
            raise RecaptionError("rerank must be a list of {model, pretrained, top_k} steps")
        from recaption.errors import unknown

        fields = [f.name for f in dataclasses.fields(RerankStep)]
        bad = next((k for s in steps for k in s if k not in fields), None)
        if bad is not None:
            raise unknown("rerank step key", bad, fields)
        try:
            chain = [RerankStep(**s) for s in steps]
        except TypeError as e:
            raise RecaptionError(f"rerank: {e}") from None
        return cls._config(chain, others, "rerank needs a clip section (the main CLIP model)")

    @staticmethod
    def _config(steps: list, others: dict, no_clip: str):
        from recaption.scoring.rerank import validate_chain

        if not steps:
            return None
        steps = validate_chain(steps)
        if others.get("clip") is None:
            raise RecaptionError(no_clip)
        return RerankConfig(tuple(steps), others["clip"])

    @classmethod
    def check(cls, c) -> None:
        """Every step's model is an open_clip name, hf-hub: or local-dir: (said before any shard is read)."""
        from recaption.scoring.clip import check_model_name

        for i, st in enumerate(c.steps):
            check_model_name(st.model, f"re-rank step {i + 1}'s CLIP model")

    @classmethod
    def settings(cls, c, run) -> dict:
        """The chain's models and top-k, and the main CLIP model's settings."""
        from recaption.scoring.rerank import settings as chain_settings

        return {"steps": [{**s, "model": model_identity(s["model"])} for s in chain_settings(list(c.steps))],
                "main_clip": Clip.settings(c.main, run)}

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        main = config.main
        self.main = clip_scorer(ctx, main)
        self.steps = list(config.steps)
        self.scorers = [
            self.main if _same_clip(st.model, st.pretrained, main.model, main.pretrained)
            else clip_scorer(ctx, dataclasses.replace(main, model=st.model, pretrained=st.pretrained))
            for st in self.steps]

    def image_models(self) -> dict:
        """Each step's CLIP image tower (the main one where a step reuses it)."""
        return {f"step{i}": s for i, s in enumerate(self.scorers)}

    def annotate_batch(self, batch) -> None:
        """Run the chain over each ok row's candidates: per-step scores and the pick."""
        from recaption.scoring.rerank import run_chain

        live = [i for i in batch.live() if batch.rows[i]["captions"]]
        if not live:
            return
        rows = [batch.rows[i] for i in live]

        def score_step(i, in_play):
            scorer = self.scorers[i]
            with batch.timer(f"rerank{i + 1}"):
                if scorer is self.main and all(len(r["clip_captions"] or []) == len(r["captions"]) for r in rows):
                    return [[r["clip_captions"][j] for j in cands] for r, cands in zip(rows, in_play)]
                emb = embed(scorer, batch, live)
                texts = [[r["captions"][j] for j in cands] for r, cands in zip(rows, in_play)]
                return scorer.score(emb, [None] * len(rows), texts)[1]

        scores, picks = run_chain([st.top_k for st in self.steps], [len(r["captions"]) for r in rows], score_step)
        for r, sc, p in zip(rows, scores, picks):
            r["rerank_scores"], r["rerank_pick"] = sc, p
