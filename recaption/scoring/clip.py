"""CLIP score (DataComp, LAION): cosine of L2-normalised open_clip embeddings, no scaling."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEFAULT_CLIP = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
SCHEMAS = ("hf-hub:", "local-dir:")  # how open_clip names a model that is not one of its own


def check_model_name(model: str, what: str = "CLIP model") -> None:
    """An open_clip name, `hf-hub:ORG/REPO` or `local-dir:PATH`, checked once before any shard is
    read: open_clip's own error for anything else lists every model it knows, once per shard."""
    import os

    from recaption.errors import RecaptionError

    if model.startswith(SCHEMAS):
        return
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        raise RecaptionError(f"{what} {model!r} is a folder, not an open_clip name; did you mean local-dir:{model}?")
    if os.path.isfile(path):
        raise RecaptionError(f"{what} {model!r} is a file, not an open_clip name; a checkpoint goes to "
                             f"--clip-pretrained (with its architecture's name here), a model folder is local-dir:PATH")
    if "/" in model or model.startswith(("~", ".")):
        raise RecaptionError(f"{what} {model!r} is neither an open_clip name nor an existing path "
                             "(a model folder is given as local-dir:PATH, a Hub model as hf-hub:ORG/REPO)")
    import open_clip

    from recaption.errors import unknown

    known = open_clip.list_models()
    if model not in known:
        raise unknown(what, model, known, "; or hf-hub:ORG/REPO, local-dir:PATH; all names: "
                                          "python -c 'import open_clip; print(open_clip.list_models())'")


def check_pretrained_tag(model: str, pretrained: str | None, what: str = "CLIP pretrained tag") -> None:
    """A pretrained tag open_clip has for `model`, or a checkpoint file; checked before any shard is
    read (open_clip's own error comes when the model is built, after the pool pass)."""
    import os

    if not pretrained or model.startswith(SCHEMAS) or os.path.exists(os.path.expanduser(pretrained)):
        return
    import open_clip

    from recaption.errors import unknown

    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        raise unknown(f"{what} of {model}", pretrained, tags, "; or a checkpoint file")


@dataclass
class ClipConfig:
    """Which open_clip model scores, with which weights, dtype and text batch size."""
    model: str = DEFAULT_CLIP  # an open_clip name, `hf-hub:org/repo` or `local-dir:/path`
    pretrained: str | None = DEFAULT_PRETRAINED  # a tag, or a local checkpoint file
    device: str | None = None
    dtype: str | None = None
    batch_size: int = 256
    # annotate keeps the image embeddings beside the annotation files (the scorer ignores it)
    save_embeddings: bool = False


class ClipScorer:
    """CLIP image and text embeddings and their cosine (the CLIP score)."""
    def __init__(self, cfg: ClipConfig | None = None, **kw):
        import open_clip

        from recaption.models import resolve_device, resolve_dtype

        cfg = cfg or ClipConfig(**kw)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        pretrained = None if cfg.model.startswith(("local-dir:", "hf-hub:")) else cfg.pretrained
        model, _, preprocess = open_clip.create_model_and_transforms(
            cfg.model, pretrained=pretrained, device=self.device, weights_only=True
        )
        self.model = model.eval().to(self.dtype)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(cfg.model)
        self.image_size = _image_size(model)
        self.id = cfg.model if pretrained is None else f"{cfg.model}/{pretrained}"

    def pixel_spec(self):
        """open_clip's own inference transform as a PixelSpec (None: no fast path)."""
        from recaption.io.pixels import from_open_clip

        if getattr(self, "_pixel_spec", None) is None:
            self._pixel_spec = from_open_clip(self.model)
        return self._pixel_spec

    def prepare(self, images):
        """Pixel tensors for a batch (CPU work, run ahead of the model): PIL images through
        open_clip's transform, or per-sample uint8 pixels from the fast path, stacked."""
        import torch

        from recaption.io.pixels import is_pixels

        x = torch.stack(list(images)) if is_pixels(images) else torch.stack([self.preprocess(im) for im in images])
        return x.pin_memory() if self.device != "cpu" and x.device.type == "cpu" else x

    def prepare_pixels(self, pixels):
        """A uint8 [N, 3, h, w] batch at `pixel_spec().size`, pinned for CUDA; `encode_pixels` takes it."""
        if self.device != "cpu" and pixels.device.type == "cpu" and not pixels.is_pinned():
            return pixels.pin_memory()
        return pixels

    def encode_images(self, images) -> "torch.Tensor":
        """L2-normalised embeddings of images (PIL, or fast-path pixels)."""
        return self.encode_pixels(self.prepare(images))

    def encode_pixels(self, x) -> "torch.Tensor":
        """L2-normalised embeddings of a prepared batch (uint8 pixels are normalised on the device)."""
        import torch
        import torch.nn.functional as F

        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:  # fast path: normalised here, on the model's device
            from recaption.io.pixels import normalize

            x = normalize(x, self.pixel_spec(), self.dtype)
        with torch.inference_mode():
            f = self.model.encode_image(x.to(self.dtype))
        return F.normalize(f.float(), dim=-1)

    def encode_texts(self, texts: list[str]) -> "torch.Tensor":
        """L2-normalised embeddings of texts, in batches."""
        import torch
        import torch.nn.functional as F

        out = []
        for i in range(0, len(texts), self.cfg.batch_size):
            tok = self.tokenizer(texts[i : i + self.cfg.batch_size]).to(self.device)
            with torch.inference_mode():
                out.append(F.normalize(self.model.encode_text(tok).float(), dim=-1))
        return torch.cat(out) if out else torch.empty(0)

    @property
    def context_length(self) -> int:
        """How many tokens the text tower reads (start and end tokens included), as the model's
        tokenizer truncates: 77 for OpenAI's models."""
        n = getattr(self.tokenizer, "context_length", None) or getattr(self.model, "context_length", None)
        if not n:
            from recaption.errors import RecaptionError

            raise RecaptionError(f"CLIP model {self.id}: its tokenizer names no context length")
        return int(n)

    def token_counts(self, texts: list[str]):
        """Each text's token count under the model's tokenizer, untruncated, start and end tokens
        included (an int64 array): more than `context_length` means the score saw a prefix."""
        import numpy as np

        tok = self.tokenizer
        if hasattr(tok, "sot_token_id") and callable(getattr(tok, "encode", None)):  # open_clip's CLIP BPE
            counts = [len(tok.encode(t)) + 2 for t in texts]
        elif callable(getattr(tok, "tokenizer", None)):  # open_clip's wrapper of a transformers tokenizer
            clean = getattr(tok, "clean_fn", None) or (lambda t: t)
            ids = tok.tokenizer([clean(t) for t in texts], truncation=False)["input_ids"] if texts else []
            counts = [len(i) for i in ids]
        else:
            from recaption.errors import RecaptionError

            raise RecaptionError(f"CLIP model {self.id}: cannot count tokens with its {type(tok).__name__} "
                                 "(use --no-clip-length)")
        return np.asarray(counts, dtype=np.int64)

    def score(self, image_emb, raw_captions: list[str | None], candidates: list[list[str]]):
        """(clip_raw per sample, clip_captions per sample) for embeddings of one batch."""
        texts, owner = [], []
        for i, (raw, cands) in enumerate(zip(raw_captions, candidates)):
            if raw is not None:
                texts.append(raw)
                owner.append((i, -1))
            for j, c in enumerate(cands):
                texts.append(c)
                owner.append((i, j))
        raw_s: list[float | None] = [None] * len(raw_captions)
        cand_s: list[list[float]] = [[0.0] * len(c) for c in candidates]
        if texts:
            t = self.encode_texts(texts)
            rows = [i for i, _ in owner]
            sims = (image_emb[rows].to(t.device) * t).sum(-1).cpu().tolist()
            for (i, j), s in zip(owner, sims):
                if j < 0:
                    raw_s[i] = s
                else:
                    cand_s[i][j] = s
        return raw_s, cand_s


def _image_size(model) -> int:
    size = getattr(getattr(model, "visual", None), "image_size", 224)
    return max(size) if isinstance(size, (tuple, list)) else int(size)
