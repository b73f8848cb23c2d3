"""Candidate re-ranking as a chain of CLIP models (LAION-COCO: 40 BLIP samples -> ViT-L/14 keeps
the top 5 -> RN50x64 keeps 1). Each step scores the candidates still in play for every image
(one text batch per step), keeps its `top_k`, and the last step's best is the pick.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from recaption.errors import RecaptionError


@dataclass(frozen=True)
class RerankStep:
    """One CLIP model of the chain and how many candidates it passes on."""

    model: str  # open_clip name, hf-hub:org/repo or local-dir:/path
    pretrained: str | None = "openai"
    top_k: int = 1

    @classmethod
    def parse(cls, text: str) -> "RerankStep":
        """`MODEL[@PRETRAINED]=K`, e.g. `ViT-L-14@openai=5` or `local-dir:/m/clip=1`."""
        if "=" not in text:
            raise RecaptionError(f"--rerank takes MODEL[@PRETRAINED]=K (e.g. ViT-L-14@openai=5), got {text!r}")
        model, k = text.rsplit("=", 1)
        pretrained = "openai"
        if "@" in model:
            model, pretrained = model.rsplit("@", 1)
        if model.startswith(("local-dir:", "hf-hub:")):
            pretrained = None
        try:
            return cls(model, pretrained, int(k))
        except ValueError:
            raise RecaptionError(f"--rerank {text!r}: K must be a whole number") from None


def validate_chain(steps: list[RerankStep]) -> list[RerankStep]:
    """Each step passes on at least one candidate and no more than it received; the last picks one."""
    for i, s in enumerate(steps):
        if s.top_k < 1:
            raise RecaptionError(f"re-rank step {i + 1} ({s.model}) must keep at least 1 candidate")
        if i and s.top_k > steps[i - 1].top_k:
            raise RecaptionError(f"re-rank step {i + 1} keeps {s.top_k} candidates but receives {steps[i - 1].top_k}")
    if steps and steps[-1].top_k != 1:
        raise RecaptionError(f"the last re-rank step picks the caption: its top-k must be 1, got {steps[-1].top_k}")
    return steps


def settings(steps: list[RerankStep]) -> list[dict]:
    """How a chain is recorded in annotation settings."""
    return [asdict(s) for s in steps]


def keep_top(scores: list[float | None], in_play: list[int], k: int) -> list[int]:
    """The k candidates of `in_play` with the highest scores (first on ties), in candidate order."""
    ranked = sorted(in_play, key=lambda j: (-(scores[j] if scores[j] is not None else float("-inf")), j))
    return sorted(ranked[:k])


def run_chain(top_ks: list[int], n_candidates: list[int], score_step):
    """Run a chain over a batch. `score_step(i, in_play)` returns, per sample, the step-i scores of the
    candidates listed in `in_play[sample]`. Returns per-sample scores [step][candidate] (None where
    not scored) and the pick per sample (None without candidates)."""
    in_play = [list(range(n)) for n in n_candidates]
    scores: list[list[list[float | None]]] = [[] for _ in n_candidates]
    for i, k in enumerate(top_ks):
        for s, (cands, vals) in enumerate(zip(in_play, score_step(i, in_play))):
            row: list[float | None] = [None] * n_candidates[s]
            for j, v in zip(cands, vals):
                row[j] = v
            scores[s].append(row)
            in_play[s] = keep_top(row, cands, k)
    return scores, [cands[0] if cands else None for cands in in_play]
