"""OpenCLIP CoCa with recaption's own batched decoder.

open_clip 3.3's `CoCa.generate` breaks on transformers 5 (open_clip issue 1129), so decoding is
done here on the model's own towers: the text tower embeds the running sequence, the multimodal
decoder attends to the image tokens, and the last position's logits choose the next token.
"""
from __future__ import annotations

from recaption.captioners.base import Captioner, CaptionerConfig, Decoding


def step_logits(model, image_embs, tokens):
    """Next-token logits [B, V] for running sequences `tokens` [B, L] (no KV cache: exact)."""
    _, token_embs = model.text(tokens)
    return model.text_decoder(image_embs, token_embs)[:, -1].float()


def _penalize(logits, tokens, penalty: float):
    if penalty == 1.0:
        return logits
    prev = logits.gather(1, tokens)
    logits = logits.scatter(1, tokens, prev.where(prev < 0, prev / penalty).where(prev >= 0, prev * penalty))
    return logits


def _filter(logits, top_k, top_p):
    import torch

    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_l, idx = torch.sort(logits, descending=True)
        probs = sorted_l.softmax(-1)
        # drop a token once the mass before it already reaches top_p (the first always stays)
        drop = (probs.cumsum(-1) - probs) >= top_p
        logits = logits.masked_fill(drop.scatter(1, idx, drop), float("-inf"))
    return logits


class _Uncached:
    """Recompute the whole sequence each step: the reference the cached decoder is tested against."""

    def __init__(self, model, embs):
        self.model, self.embs = model, embs

    def prefill(self, tokens):
        return step_logits(self.model, self.embs, tokens)

    def step(self, tokens):
        return step_logits(self.model, self.embs, tokens)

    def reorder(self, rows):
        self.embs = self.embs[rows]


def _stepper(model, embs, use_cache: bool):
    from recaption.captioners.coca_cache import CachedCocaDecoder, supported

    if use_cache and supported(model):
        return CachedCocaDecoder(model, embs), True
    return _Uncached(model, embs), False


def decode(model, image_embs, prefix: list[int], eot: int, dec: Decoding, max_context: int,
           generator=None, use_cache: bool = True) -> list[list[list[int]]]:
    """Token ids (prefix excluded, eot excluded) per image: `num_captions` lists each."""
    if dec.strategy == "beam":
        return _beam(model, image_embs, prefix, eot, dec, max_context, use_cache)
    import torch

    b, n = image_embs.shape[0], dec.num_captions
    embs = image_embs.repeat_interleave(n, 0)
    tokens = torch.tensor([prefix], device=embs.device).repeat(b * n, 1)
    done = torch.zeros(b * n, dtype=torch.bool, device=embs.device)
    max_new = _max_new(dec, len(prefix), max_context)
    min_new = _min_new(dec, len(prefix))
    stepper, cached = _stepper(model, embs, use_cache)
    raw = stepper.prefill(tokens)
    for step in range(max_new):
        logits = _penalize(raw, tokens, dec.repetition_penalty)
        if step < min_new:
            logits[:, eot] = float("-inf")
        if dec.strategy == "greedy":
            nxt = logits.argmax(-1)
        else:
            logits = _filter(logits / max(dec.temperature, 1e-5), dec.top_k, dec.top_p)
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
        nxt = nxt.masked_fill(done, eot)
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        done |= nxt == eot
        if bool(done.all()) or step == max_new - 1:
            break
        raw = stepper.step(nxt if cached else tokens)
    out = [_strip(t[len(prefix):].tolist(), eot) for t in tokens]
    return [out[i * n : (i + 1) * n] for i in range(b)]


def _beam(model, image_embs, prefix, eot, dec: Decoding, max_context, use_cache=True):
    import torch

    b, k = image_embs.shape[0], dec.num_beams
    embs = image_embs.repeat_interleave(k, 0)
    tokens = torch.tensor([prefix], device=embs.device).repeat(b * k, 1)
    stepper, cached = _stepper(model, embs, use_cache)
    raw = stepper.prefill(tokens)
    scores = torch.zeros(b, k, device=embs.device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep one alive
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    max_new, min_new = _max_new(dec, len(prefix), max_context), _min_new(dec, len(prefix))
    for step in range(max_new):
        logits = _penalize(raw, tokens, dec.repetition_penalty)
        if step < min_new:
            logits[:, eot] = float("-inf")
        logp = logits.log_softmax(-1).view(b, k, -1) + scores[:, :, None]
        v = logp.shape[-1]
        top, idx = logp.view(b, -1).topk(2 * k, dim=-1)
        new_tokens, new_scores = [], torch.full((b, k), float("-inf"), device=embs.device)
        rows = []
        for i in range(b):
            alive = 0
            for s, j in zip(top[i].tolist(), idx[i].tolist()):
                beam, tok = divmod(j, v)
                seq = tokens[i * k + beam]
                if tok == eot:
                    if s > float("-inf"):
                        finished[i].append((s / (step + 1), seq[len(prefix):].tolist()))
                    continue
                if alive < k:
                    rows.append(i * k + beam)
                    new_tokens.append(tok)
                    new_scores[i, alive] = s
                    alive += 1
            while alive < k:  # pad with dead beams so shapes stay fixed
                rows.append(i * k)
                new_tokens.append(eot)
                alive += 1
        nxt = torch.tensor(new_tokens, device=embs.device)
        tokens = torch.cat([tokens[rows], nxt[:, None]], 1)
        scores = new_scores
        if all(len(f) >= k for f in finished) or step == max_new - 1:
            break
        stepper.reorder(rows)
        raw = stepper.step(nxt if cached else tokens)
    for i in range(b):
        for beam in range(k):
            if scores[i, beam] > float("-inf"):
                finished[i].append((float(scores[i, beam]) / max(tokens.shape[1] - len(prefix), 1),
                                    _strip(tokens[i * k + beam][len(prefix):].tolist(), eot)))
    out = []
    for f in finished:
        f.sort(key=lambda x: -x[0])
        out.append([seq for _, seq in f[: dec.num_captions]])
    return out


def _pinned(x):
    return x.pin_memory() if x.device.type == "cpu" and not x.is_pinned() else x


def _strip(ids: list[int], eot: int) -> list[int]:
    return ids[: ids.index(eot)] if eot in ids else ids


def _max_new(dec: Decoding, prefix_len: int, max_context: int) -> int:
    room = max_context - prefix_len
    if dec.max_length is not None:
        return max(1, min(room, dec.max_length - prefix_len))
    return max(1, min(room, dec.max_new_tokens or 30))


def _min_new(dec: Decoding, prefix_len: int) -> int:
    if dec.min_length is not None:
        return max(0, dec.min_length - prefix_len)
    return dec.min_new_tokens or 0


class CocaCaptioner(Captioner):
    """OpenCLIP CoCa through recaption's batched, KV-cached decoder."""
    def __init__(self, cfg: CaptionerConfig):
        super().__init__(cfg)
        import open_clip

        from recaption.models import resolve_device, resolve_dtype

        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        name, pretrained = cfg.model, cfg.revision
        if ":" in name and not name.startswith(("local-dir:", "hf-hub:")):
            name, pretrained = name.split(":", 1)  # `coca_ViT-L-14:mscoco_finetuned_laion2B-s13B-b90k`
        if name.startswith(("local-dir:", "hf-hub:")):
            pretrained = None
        model, _, self.preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=self.device, weights_only=True
        )
        self.model = model.eval().to(self.dtype)
        self.tokenizer = open_clip.get_tokenizer(name)
        self.sot = getattr(self.tokenizer, "sot_token_id", 49406)
        self.eot = getattr(self.tokenizer, "eot_token_id", 49407)
        self.max_context = int(getattr(self.model, "context_length", 76))
        self.prefix = [self.sot]
        if cfg.prompt:
            ids = self.tokenizer([cfg.prompt])[0].tolist()
            self.prefix += [t for t in ids if t not in (self.sot, self.eot, 0)]
        size = self.model.visual.image_size
        self._size = cfg.image_size or (max(size) if isinstance(size, (tuple, list)) else int(size))

    @property
    def image_size(self) -> int:
        """The vision tower's input size."""
        return int(self._size)

    def pixel_spec(self):
        """open_clip's own inference transform as a PixelSpec (None: no fast path)."""
        from recaption.io.pixels import from_open_clip

        if getattr(self, "_pixel_spec", None) is None:
            self._pixel_spec = from_open_clip(self.model)
        return self._pixel_spec

    def prepare(self, images):
        """Pixel tensors for a batch: PIL images through open_clip's transform, or fast-path uint8 pixels stacked."""
        import torch

        from recaption.io.pixels import is_pixels

        x = torch.stack(list(images)) if is_pixels(images) else torch.stack([self.preprocess(im) for im in images])
        return x.pin_memory() if self.device != "cpu" and x.device.type == "cpu" else x

    def prepare_pixels(self, pixels):
        """Inputs for a uint8 [N, 3, h, w] batch at `pixel_spec().size`; normalised on the device."""
        return _pinned(pixels) if self.device != "cpu" else pixels

    def _generate(self, images, raw_captions):
        return self._generate_prepared(self.prepare(images), raw_captions)

    def _generate_prepared(self, x, raw_captions):
        import torch

        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:  # fast path: normalised here, on the model's device
            from recaption.io.pixels import normalize

            x = normalize(x, self.pixel_spec(), self.dtype)
        x = x.to(self.dtype)
        with torch.inference_mode():
            _, image_embs = self.model._encode_image(x)
            ids = decode(self.model, image_embs, self.prefix, self.eot, self.cfg.decoding, self.max_context)
        prompt = self.cfg.prompt or ""
        return [[(prompt + " " + self.tokenizer.decode(s)).strip() if prompt else self.tokenizer.decode(s)
                 for s in per] for per in ids]
