"""BLIP and BLIP-2 through transformers' `generate` (BLIP-2 with OPT or Flan-T5, 8/4-bit)."""
from __future__ import annotations

from recaption.captioners.base import Captioner, CaptionerConfig
from recaption.errors import RecaptionError, require


def generate_kwargs(cfg: CaptionerConfig) -> dict:
    """transformers `generate` arguments for a config's decoding."""
    d = cfg.decoding
    kw: dict = {"num_return_sequences": d.num_captions, "repetition_penalty": d.repetition_penalty}
    if d.strategy == "greedy":
        kw |= {"do_sample": False, "num_beams": 1}
    elif d.strategy == "beam":
        kw |= {"do_sample": False, "num_beams": d.num_beams}
    else:
        kw |= {"do_sample": True, "temperature": d.temperature, "top_p": d.top_p if d.top_p is not None else 1.0,
               "top_k": d.top_k if d.top_k is not None else 0}
    for name in ("max_new_tokens", "min_new_tokens", "max_length", "min_length"):
        v = getattr(d, name)
        if v is not None:
            kw[name] = v
    if "max_length" in kw:  # BLIP-style total length wins over the new-token default
        kw.pop("max_new_tokens", None)
    return kw


def quantization_config(quantize: str | None, dtype):
    """A BitsAndBytesConfig for 8bit or 4bit loading (None for full precision)."""
    if quantize is None:
        return None
    require("bitsandbytes", "quant")
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4")


class HFCaptioner(Captioner):
    """BLIP and BLIP-2 (OPT or Flan-T5, optionally 8/4-bit) through transformers."""
    def __init__(self, cfg: CaptionerConfig):
        super().__init__(cfg)
        from transformers import AutoProcessor, Blip2ForConditionalGeneration, BlipForConditionalGeneration

        from recaption.models import log_once, quiet_hub, resolve_device, resolve_dtype

        quiet_hub()
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        classes = {"blip": BlipForConditionalGeneration, "blip2": Blip2ForConditionalGeneration}
        if cfg.backend not in classes:  # another backend registered on this class: say so, guess nothing
            raise RecaptionError(f"HFCaptioner serves the blip and blip2 backends, not {cfg.backend!r}")
        cls = classes[cfg.backend]
        common = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
        q = quantization_config(cfg.quantize, self.dtype)
        load = {"dtype": self.dtype, "use_safetensors": None}
        if q is not None:
            load["quantization_config"] = q
            load["device_map"] = {"": self.device if self.device != "cpu" else "cpu"}
        self.model = cls.from_pretrained(cfg.model, **common, **load).eval()
        if q is None:
            self.model.to(self.device)
        else:
            log_once("bitsandbytes")
        self.processor = AutoProcessor.from_pretrained(cfg.model, **common)
        self.gen_kwargs = generate_kwargs(cfg)
        self._text = self._text_inputs()
        ip = getattr(self.processor, "image_processor", None)
        size = getattr(ip, "size", None) or {}
        self._size = cfg.image_size or size.get("height") or size.get("shortest_edge") or 384

    @property
    def image_size(self) -> int:
        """The processor's input size."""
        return int(self._size)

    def _text_inputs(self) -> dict:
        """The text side of every sample's inputs (the prompt, BLIP-2's query tokens), built once here
        in the model's thread: the tokenizer is then used by that thread alone."""
        import torch
        from PIL import Image

        text = [self.cfg.prompt] if self.cfg.prompt else None
        inputs = self.processor(images=[Image.new("RGB", (8, 8))], text=text, return_tensors="pt")
        mc = self.model.config
        if text is None and self.cfg.backend == "blip2" and not getattr(mc, "use_decoder_only_language_model", True):
            # BLIP-2 + T5 without a prompt: the encoder sees the query embeddings alone. transformers 5's
            # default here appends text_config.bos_token_id, which T5 configs do not have.
            ids = torch.full((1, mc.num_query_tokens), mc.image_token_index, dtype=torch.long)
            inputs["input_ids"], inputs["attention_mask"] = ids, torch.ones_like(ids)
        return {k: v for k, v in inputs.items() if k != "pixel_values"}

    def pixel_spec(self):
        """The processor's own resize/normalise settings as a PixelSpec (None: no fast path)."""
        from recaption.io.pixels import from_hf_image_processor

        if getattr(self, "_pixel_spec", None) is None:
            ip = getattr(self.processor, "image_processor", None)
            self._pixel_spec = from_hf_image_processor(ip) if ip is not None else None
        return self._pixel_spec

    def prepare(self, images):
        """Pixel values from the image processor (no tokenizer: safe off the model thread), plus the
        prepared text inputs repeated per image. Per-sample uint8 pixels from the fast path (its
        retries and OOM halving) are stacked instead."""
        import torch

        from recaption.io.pixels import is_pixels

        if is_pixels(images):
            return self.prepare_pixels(torch.stack(list(images)))
        pix = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        inputs = {"pixel_values": pix} | {k: v.repeat(len(images), 1) for k, v in self._text.items()}
        if self.device != "cpu":
            inputs = {k: v.pin_memory() for k, v in inputs.items()}
        return inputs

    def prepare_pixels(self, pixels):
        """Inputs for a uint8 [N, 3, h, w] batch at `pixel_spec().size`; normalised on the device."""
        inputs = {k: v.repeat(len(pixels), 1) for k, v in self._text.items()}
        if self.device != "cpu":
            inputs = {k: v.pin_memory() for k, v in inputs.items()}
            if pixels.device.type == "cpu" and not pixels.is_pinned():
                pixels = pixels.pin_memory()
        return {"pixel_values": pixels} | inputs

    def _generate(self, images, raw_captions):
        return self._generate_prepared(self.prepare(images), raw_captions)

    def _generate_prepared(self, inputs, raw_captions):
        import torch

        inputs = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
        px = inputs.get("pixel_values")
        if px is not None and px.dtype == torch.uint8:  # fast path: normalised here, on the device
            from recaption.io.pixels import normalize

            inputs["pixel_values"] = normalize(px, self.pixel_spec(), self.dtype)
        elif px is not None:
            inputs["pixel_values"] = px.to(self.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self.gen_kwargs)
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        n = self.cfg.decoding.num_captions
        return [texts[i * n : (i + 1) * n] for i in range(len(inputs["pixel_values"]))]
