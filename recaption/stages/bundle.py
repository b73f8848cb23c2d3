"""The models of one annotate worker, built once from picklable configs, and what they do to a batch.

The caller's configs are never changed: a worker-level device is applied to copies. Only the model
thread touches tokenizers; `prepare` (images only) may run in the reader thread.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass

from recaption.captioners.base import CaptionerConfig
from recaption.scoring.clip import ClipConfig
from recaption.scoring.rerank import RerankStep, run_chain
from recaption.scoring.sieve import SieveConfig

log = logging.getLogger("recaption")


@dataclass
class ModelSpec:
    """What to build in a worker. None leaves a model out."""

    captioner: CaptionerConfig | None = None
    clip: ClipConfig | None = None
    sieve: SieveConfig | None = None
    device: str | None = None  # applied where a config names none
    metrics: bool = False  # filter metrics, with the language model below
    lang_model: str | None = None  # fastText lid.176 file (default: the bundled lid.176.ftz)
    rerank: tuple[RerankStep, ...] = ()  # candidate re-ranking chain


def _is_pixels(x) -> bool:
    """A uint8 pixel batch from the fast path (rather than inputs a processor prepared)."""
    return x is not None and str(getattr(x, "dtype", "")) == "torch.uint8"


def _same_clip(model_a, pre_a, model_b, pre_b) -> bool:
    """Same open_clip model; a local-dir:/hf-hub: model carries its weights, so its tag does not count."""
    own = model_a.startswith(("local-dir:", "hf-hub:"))
    return model_a == model_b and (own or pre_a == pre_b)


def _on(cfg, device):
    return cfg if cfg is None or cfg.device or not device else dataclasses.replace(cfg, device=device)


class ModelBundle:
    """Captioner, CLIP scorer and SIEVE scorer of one worker."""

    def __init__(self, spec: ModelSpec):
        self.captioner = self.clip = self.sieve = self.lid = None
        if spec.captioner is not None:
            from recaption.captioners import build_captioner

            self.captioner = build_captioner(_on(spec.captioner, spec.device))
        if spec.clip is not None:
            from recaption.scoring.clip import ClipScorer

            self.clip = ClipScorer(_on(spec.clip, spec.device))
        if spec.sieve is not None:
            from recaption.scoring.sieve import SieveScorer

            s = _on(spec.sieve, spec.device)
            self.sieve = SieveScorer(s.model, s.mask, device=s.device)
        if spec.metrics:
            from recaption.scoring.language import LanguageId

            self.lid = LanguageId(spec.lang_model)
        self.steps = list(spec.rerank)
        self.rerankers = [self._reranker(st, spec) for st in self.steps]

    def _reranker(self, step: RerankStep, spec: ModelSpec):
        """The main CLIP scorer where a step names the same model (its scores are reused), else its own."""
        if spec.clip is not None and _same_clip(step.model, step.pretrained, spec.clip.model, spec.clip.pretrained):
            return self.clip
        from recaption.scoring.clip import ClipScorer

        base = spec.clip or ClipConfig()
        return ClipScorer(_on(dataclasses.replace(base, model=step.model, pretrained=step.pretrained), spec.device))

    @property
    def draft_size(self) -> int | None:
        """The largest input any image model needs: JPEGs decode at no less than this."""
        sizes = [m.image_size for m in (self.captioner, self.clip, *self.rerankers) if m is not None]
        return max(sizes) if sizes else None

    def image_models(self) -> dict[str, object]:
        """Each model that reads pixels, under the name its inputs travel by."""
        out = {}
        if self.captioner is not None:
            out["caption"] = self.captioner
        if self.clip is not None:
            out["clip"] = self.clip
        for i, r in enumerate(self.rerankers):
            if r is not self.clip:
                out[f"rerank{i}"] = r
        return out

    def reranker_name(self, i: int) -> str:
        """The name a re-ranking step's inputs travel under ('clip' when it reuses the main model)."""
        return "clip" if self.rerankers[i] is self.clip else f"rerank{i}"

    def decode_pool(self, opts, workers: int, device: str):
        """The worker's decode pool: the fast path's pixel specs, PIL images for models that keep
        their own processor (opts.preprocess == 'exact', vLLM, settings the fast path cannot copy)."""
        from recaption.io.decode import DecodePool
        from recaption.io.pixels import specs_for

        specs = specs_for(self.image_models(), opts.preprocess)
        self.exact = [n for n, sp in specs.items() if sp is None]
        return DecodePool({n: sp for n, sp in specs.items() if sp is not None}, batch_size=opts.batch_size,
                          workers=workers, max_pixels=opts.max_pixels, draft_size=self.draft_size,
                          images=bool(self.exact) or not specs, device=device, gpu_decode=opts.gpu_decode)

    def exact_preparers(self) -> dict:
        """Image-only preparation of the models on their own processors (safe in the reader thread)."""
        models = self.image_models()
        return {n: models[n].prepare for n in getattr(self, "exact", [])}

    def caption(self, rows: list[dict], images: list, shard: str, prepared=None) -> None:
        """Fill `captions` of rows; a failing batch is retried sample by sample so only the bad one errors.
        Sampling is seeded from the shard name and the batch's first key, so any worker gives the same."""
        if _is_pixels(prepared):
            prepared = self.captioner.prepare_pixels(prepared, [r["raw_caption"] for r in rows])
        for r, c in zip(rows, self._caption_isolating(rows, images, shard, prepared)):
            if c is not None:
                r["captions"] = c

    def _caption_isolating(self, rows, images, shard, prepared=None):
        try:
            return self.captioner.caption(images, [r["raw_caption"] for r in rows], f"{shard}/{rows[0]['key']}",
                                          prepared)
        except Exception as e:
            if len(images) == 1:
                rows[0].update(status="error", error=f"caption: {type(e).__name__}: {e}")
                return [None]
            log.warning("captioning a batch of %s failed (%s); retrying sample by sample", shard, e)
            return [self._caption_isolating([r], [im], shard)[0] for r, im in zip(rows, images)]

    def clip_score(self, rows: list[dict], images: list, prepared=None) -> None:
        """Fill `clip_raw` and `clip_captions` of rows, one image embedding per sample."""
        live = [(r, im) for r, im in zip(rows, images) if r["status"] == "ok"]
        if not live:
            return
        emb = self._embed(self.clip, [im for _, im in live], prepared if len(live) == len(rows) else None)
        raw_s, cand_s = self.clip.score(emb, [r["raw_caption"] for r, _ in live], [r["captions"] or [] for r, _ in live])
        for (r, _), a, b in zip(live, raw_s, cand_s):
            r["clip_raw"], r["clip_captions"] = a, b

    @staticmethod
    def _embed(scorer, images: list, prepared=None):
        if prepared is None:
            return scorer.encode_images(images)
        return scorer.encode_pixels(scorer.prepare_pixels(prepared) if _is_pixels(prepared) else prepared)

    def rerank(self, rows: list[dict], images: dict, prepared: dict | None = None, timer=None) -> None:
        """Run the re-ranking chain over each ok row's candidates: per-step scores and the pick.
        `images` and `prepared` are keyed by the model names of `image_models`."""
        live = [(i, r) for i, r in enumerate(rows) if r["status"] == "ok" and r["captions"]]
        whole = len(live) == len(rows)

        def score_step(i, in_play):
            scorer, name = self.rerankers[i], self.reranker_name(i)
            with timer(f"rerank{i + 1}") if timer else contextlib.nullcontext():
                if scorer is self.clip and all(len(r["clip_captions"] or []) == len(r["captions"]) for _, r in live):
                    return [[r["clip_captions"][j] for j in cands] for (_, r), cands in zip(live, in_play)]
                emb = self._embed(scorer, [images[name][k] for k, _ in live],
                                  (prepared or {}).get(name) if whole else None)
                texts = [[r["captions"][j] for j in cands] for (_, r), cands in zip(live, in_play)]
                return scorer.score(emb, [None] * len(live), texts)[1]

        if not live:
            return
        scores, picks = run_chain([st.top_k for st in self.steps], [len(r["captions"]) for _, r in live], score_step)
        for (_, r), sc, p in zip(live, scores, picks):
            r["rerank_scores"], r["rerank_pick"] = sc, p

    def sieve_score(self, rows: list[dict]) -> None:
        """Fill the SIEVE columns of ok rows; all texts of the shard in one embedding call."""
        live = [r for r in rows if r["key"] is not None and r["status"] == "ok"]
        res = self.sieve.score([r["raw_caption"] for r in live], [r["captions"] or [] for r in live])
        for r, x in zip(live, res):
            r["sieve"], r["sieve_mean"], r["sieve_best"] = x.sieve, x.sieve_mean, x.sieve_best
