"""Image-text-to-text models through transformers: Qwen2-VL / Qwen2.5-VL, LLaVA-1.5 / LLaVA-NeXT,
Idefics3 / SmolVLM, Florence-2, loaded with `AutoModelForImageTextToText` from a hub id or a folder.

Prompts are chat messages (`captioners/chat.py`) rendered by the model's own processor. The
input thread's `prepare(images)` runs the processor's image side (pixels, grids, the text each
image expands to); the model thread renders the prompts (they hold the alt-text), tokenizes and
generates, so the tokenizer is used by one thread only.
"""
from __future__ import annotations

from recaption.captioners.base import Captioner, CaptionerConfig
from recaption.captioners.chat import DEFAULT_TEMPLATE, load_template
from recaption.errors import RecaptionError


def generate_kwargs(cfg: CaptionerConfig) -> dict:
    """transformers `generate` arguments for a config's decoding (BLIP's, lengths in new tokens)."""
    from recaption.captioners.hf import generate_kwargs as hf_kwargs

    d = cfg.decoding
    if d.max_length is not None or d.min_length is not None:
        # a VLM's prompt is hundreds of image tokens long: a total length would mean nothing
        raise RecaptionError("the vlm backend counts lengths in new tokens: use --max-new-tokens / --min-new-tokens, "
                             "not max_length / min_length")
    kw = hf_kwargs(cfg)
    kw.setdefault("max_new_tokens", 64)
    return kw


def loading_kwargs(cfg: CaptionerConfig) -> dict:
    """`engine_args` of a vlm config: `processor` (AutoProcessor.from_pretrained keywords, e.g. Qwen's
    `size`) and `model` (the model's, e.g. `attn_implementation`); any other key is refused."""
    bad = sorted(set(cfg.engine_args) - {"processor", "model"})
    if bad:
        raise RecaptionError(f"engine_args {bad[0]!r}: the vlm backend takes engine_args processor and model "
                             "(keyword arguments of AutoProcessor's and the model's from_pretrained)")
    for k in ("processor", "model"):
        if not isinstance(cfg.engine_args.get(k) or {}, dict):
            raise RecaptionError(f"engine_args {k!r}: the vlm backend takes a mapping of keyword arguments, "
                                 f"got {cfg.engine_args[k]!r}")
    return {k: dict(cfg.engine_args.get(k) or {}) for k in ("processor", "model")}


# model_type -> modules its transformers processor imports beyond recaption's dependencies
PROCESSOR_NEEDS = {"smolvlm": ("num2words",)}


def check_config(cfg: CaptionerConfig) -> None:
    """The vlm backend's settings checked before any shard is read: lengths in new tokens,
    engine_args it takes, and what a local folder's processor needs installed."""
    import importlib.util
    import json
    from pathlib import Path

    generate_kwargs(cfg)
    loading_kwargs(cfg)
    if cfg.model.lower().startswith("microsoft/florence-2"):
        raise RecaptionError(f"{cfg.model}: Microsoft's Florence-2 repositories ship their own model code, not the "
                             "Florence-2 transformers carries (its weights are laid out differently); use the "
                             "converted florence-community/Florence-2-base or -large")
    config = Path(cfg.model).expanduser() / "config.json"
    try:
        model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    except (OSError, ValueError):
        model_type = None  # unreadable: from_pretrained says so
    for module in PROCESSOR_NEEDS.get(model_type, ()):
        if importlib.util.find_spec(module) is None:
            raise RecaptionError(f"{cfg.model}: the {model_type} processor needs {module}, which is not installed: "
                                 f"pip install {module}")


class VLMCaptioner(Captioner):
    """Any image-text-to-text model transformers loads with AutoModelForImageTextToText, batched."""

    def __init__(self, cfg: CaptionerConfig):
        super().__init__(cfg)
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from recaption.captioners.hf import quantization_config
        from recaption.models import log_once, quiet_hub, resolve_device, resolve_dtype

        quiet_hub()
        self.template = load_template(cfg.template or DEFAULT_TEMPLATE)
        self.gen_kwargs = generate_kwargs(cfg)
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        common = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
        extra = loading_kwargs(cfg)
        q = quantization_config(cfg.quantize, self.dtype)
        load = {"dtype": self.dtype} | extra["model"]
        if q is not None:
            load |= {"quantization_config": q, "device_map": {"": self.device}}
        self.model = AutoModelForImageTextToText.from_pretrained(cfg.model, **common, **load).eval()
        if q is None:
            self.model.to(self.device)
        else:
            log_once("bitsandbytes")
        self.processor = AutoProcessor.from_pretrained(cfg.model, **common, **extra["processor"])
        tok = getattr(self.processor, "tokenizer", None)
        if tok is None or not hasattr(self.processor, "image_processor"):
            raise RecaptionError(f"{cfg.model}: its processor ({type(self.processor).__name__}) has no tokenizer and "
                                 "image processor; the vlm backend serves image-text-to-text models")
        tok.padding_side = "left"  # decoder-only batches generate after their prompts' last token
        self.encoder_decoder = bool(getattr(self.model.config, "is_encoder_decoder", False))
        self.chat = getattr(self.processor, "chat_template", None) is not None
        # the processor's image side alone, for the input thread (transformers >= 5.x has it apart)
        self._split = callable(getattr(type(self.processor), "_process_images", None))
        self._images_kwargs = self._merged()["images_kwargs"] if self._split else {}
        self.tokens_generated = 0  # new tokens, padding and what follows an end of sequence left out
        self.captions_generated = 0

    @property
    def image_size(self) -> int:
        """JPEGs decode at no less than the processor's input: its largest edge, the side of its
        largest pixel count (Qwen2-VL's dynamic resolution), or the shorter side of its largest
        anyres grid (LLaVA-NeXT's pinpoints); 768 where it says none of them."""
        import math

        ip = self.processor.image_processor
        if self.cfg.image_size:
            return int(self.cfg.image_size)
        size = getattr(ip, "size", None) or {}
        if type(ip).__name__.startswith("Qwen2VL"):  # Qwen2-VL's and Qwen2.5-VL's: a pixel count
            return math.isqrt(int(size["longest_edge"]) - 1) + 1
        edges = [v for k, v in dict(size).items() if k in ("height", "width", "shortest_edge", "longest_edge")
                 and isinstance(v, int)]
        # anyres: the image is resized into its best grid, aspect kept, so its shorter side is at most
        # the grid's; a draft whose shorter side is at least that never leaves the tiles upsampled
        # (nor a smaller grid chosen), where the tile's own side alone (336 of 672) would
        grids = getattr(ip, "image_grid_pinpoints", None) or []
        edges += [min(int(h), int(w)) for h, w in grids]
        return int(max(edges) if edges else 768)

    def _merged(self, **kw) -> dict:
        return self.processor._merge_kwargs(tokenizer_init_kwargs=self.processor.tokenizer.init_kwargs,
                                            return_tensors="pt", **kw)

    def prepare(self, images):
        """The processor's image side (pixels and what each image's placeholder expands to); no
        tokenizer, so it is safe off the model thread. None where the processor has no such split."""
        if not self._split:
            return None
        images = [[im] for im in images]  # one image per prompt: SmolVLM reads a flat list as one prompt's
        processed, replacements = type(self.processor)._process_images(self.processor, images, **self._images_kwargs)
        if self.device != "cpu":
            processed = {k: (v.pin_memory() if hasattr(v, "pin_memory") else v) for k, v in processed.items()}
        return {"images": images, "processed": processed, "replacements": replacements}

    def prompts(self, raw_captions) -> list[str]:
        """Each sample's prompt as the processor renders its chat template (the text alone where it has none)."""
        if not self.chat:
            return [self.template.plain(raw) for raw in raw_captions]
        convs = [self.template.messages(raw, {"type": "image"}) for raw in raw_captions]
        return list(self.processor.apply_chat_template(convs, tokenize=False, add_generation_prompt=True))

    def _generate(self, images, raw_captions):
        return self._generate_prepared(self.prepare(images) or {"images": [[im] for im in images]}, raw_captions)

    def _inputs(self, prepared, raw_captions):
        texts = self.prompts(raw_captions)
        images = prepared["images"]
        if "processed" not in prepared:
            return self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        done = (dict(prepared["processed"]), list(prepared["replacements"]))
        # the processor's own call, with its image side replaced by what the input thread computed
        self.processor._process_images = lambda *_a, **_k: done
        try:
            return self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        finally:
            del self.processor._process_images

    def _generate_prepared(self, prepared, raw_captions):
        import torch

        inputs = self._inputs(prepared, raw_captions)
        inputs = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in inputs.items()}
        for k in ("pixel_values", "pixel_values_videos"):
            if k in inputs and inputs[k].is_floating_point():
                inputs[k] = inputs[k].to(self.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self.gen_kwargs)
        new = out if self.encoder_decoder else out[:, inputs["input_ids"].shape[1]:]
        self._count(new)
        texts = self.processor.batch_decode(new, skip_special_tokens=True)
        n = self.cfg.decoding.num_captions
        return [texts[i * n:(i + 1) * n] for i in range(len(raw_captions))]

    def _count(self, new) -> None:
        eos = self.model.generation_config.eos_token_id
        self.tokens_generated += count_new_tokens(new, eos, self.processor.tokenizer.pad_token_id)
        self.captions_generated += len(new)


def count_new_tokens(new, eos, pad) -> int:
    """New tokens up to and including each sequence's first end, padding left out: what the
    captions cost to decode (column-wise over the batch)."""
    import torch

    eos = torch.tensor(eos if isinstance(eos, list) else [] if eos is None else [eos], device=new.device)
    is_eos = torch.isin(new, eos)
    after_end = (torch.cumsum(is_eos, 1) - is_eos.long()) > 0
    real = ~after_end & ((new != pad) | is_eos) if pad is not None else ~after_end
    return int(real.sum())
