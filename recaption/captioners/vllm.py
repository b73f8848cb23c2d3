"""VLMs (Qwen2.5-VL, LLaVA, ...) through vLLM's offline chat API: `LLM.chat` with images.

The prompt is the same chat template file the transformers backend renders (`captioners/chat.py`):
vLLM applies the model's own chat template. Request building and output handling are plain
functions so they are tested without vLLM; only `VLLMCaptioner.__init__` and `_generate` touch
the library.
"""
from __future__ import annotations

from recaption.captioners.base import Captioner, CaptionerConfig, Decoding
from recaption.captioners.chat import DEFAULT_TEMPLATE, ChatTemplate, load_template
from recaption.errors import RecaptionError, require


def build_conversations(template: ChatTemplate, images, raw_captions) -> list[list[dict]]:
    """One vLLM chat conversation per image: the template's turns, the image as a PIL content part."""
    return [template.messages(raw, {"type": "image_pil", "image_pil": im}) for im, raw in zip(images, raw_captions)]


def sampling_kwargs(dec: Decoding, seed: int | None = None) -> dict:
    """vLLM SamplingParams arguments for our decoding options."""
    if dec.strategy == "beam":
        raise RecaptionError("the vllm backend does not do beam search here; use greedy or sample")
    kw = {
        "n": dec.num_captions,
        "max_tokens": dec.max_new_tokens or dec.max_length or 64,
        "repetition_penalty": dec.repetition_penalty,
        "seed": seed,
    }
    if dec.min_new_tokens or dec.min_length:
        kw["min_tokens"] = dec.min_new_tokens or dec.min_length
    if dec.strategy == "greedy":
        kw["temperature"] = 0.0
    else:
        kw["temperature"] = dec.temperature
        if dec.top_p is not None:
            kw["top_p"] = dec.top_p
        if dec.top_k is not None:
            kw["top_k"] = dec.top_k
    return kw


# LLM(...) arguments recaption sets from its own options: given in engine_args they would override them
OWN_ARGS = {"model": "--model", "revision": "revision", "trust_remote_code": "--trust-remote-code",
            "dtype": "--dtype", "seed": "--seed"}


def check_config(cfg: CaptionerConfig) -> None:
    """The vllm backend's settings checked before any shard is read: decoding it can do, and
    engine_args that are LLM(...) keywords, not another backend's or recaption's own options."""
    sampling_kwargs(cfg.decoding)
    for k in sorted(cfg.engine_args):
        if k == "processor" or (k == "model" and isinstance(cfg.engine_args[k], dict)):
            raise RecaptionError(f"engine_args {k!r} is the vlm backend's (transformers' from_pretrained keywords); "
                                 "the vllm backend takes LLM(...) keywords (e.g. max_model_len, mm_processor_kwargs)")
        if k in OWN_ARGS:
            raise RecaptionError(f"engine_args {k!r}: set it with {OWN_ARGS[k]}, not engine_args")


def engine(LLM, cfg: CaptionerConfig, **fixed):
    """vLLM's `LLM` for a config: recaption's own options, then `fixed`, then the engine_args."""
    args = {"model": cfg.model, "revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code,
            "dtype": cfg.dtype or "auto", "seed": cfg.decoding.seed, **fixed} | dict(cfg.engine_args)
    if cfg.quantize:
        args.setdefault("quantization", "bitsandbytes")
    return LLM(**{k: v for k, v in args.items() if v is not None})


def collect(outputs) -> list[list[str]]:
    """RequestOutput list -> texts, in request order (vLLM returns them in input order)."""
    return [[c.text for c in o.outputs] for o in outputs]


class VLLMCaptioner(Captioner):
    """VLMs served by vLLM's offline `LLM.chat`, one conversation per image."""
    def __init__(self, cfg: CaptionerConfig):
        super().__init__(cfg)
        require("vllm", "vllm")
        from vllm import LLM

        self.template = load_template(cfg.template or DEFAULT_TEMPLATE)
        self.llm = engine(LLM, cfg, limit_mm_per_prompt={"image": 1})
        self.tokens_generated = 0  # new tokens, as vLLM reports them (benchmarks read it)
        self.captions_generated = 0

    @property
    def image_size(self) -> int:
        """The size images are decoded at before vLLM's own processor."""
        return self.cfg.image_size or 768

    def _generate(self, images, raw_captions):
        return self.chat(build_conversations(self.template, images, raw_captions))

    def chat(self, conversations) -> list[list[str]]:
        """One `LLM.chat` call over the batch's conversations, its tokens counted; texts in order."""
        import torch
        from vllm import SamplingParams

        seed = int(torch.initial_seed() % 2**31)
        params = SamplingParams(**sampling_kwargs(self.cfg.decoding, seed))
        outs = self.llm.chat(conversations, params, use_tqdm=False)
        done = [c for o in outs for c in o.outputs]
        self.tokens_generated += sum(len(c.token_ids) for c in done)
        self.captions_generated += len(done)
        return collect(outs)


def text_conversations(template: ChatTemplate, contexts) -> list[list[dict]]:
    """One text-only vLLM chat conversation per sample (a chained group's: no image part)."""
    return [template.text_messages(c) for c in contexts]


class VLLMTextCaptioner(VLLMCaptioner):
    """A chained group's text model served by vLLM's offline `LLM.chat`, conversations without images."""

    def __init__(self, cfg: CaptionerConfig):
        Captioner.__init__(self, cfg)
        require("vllm", "vllm")
        from vllm import LLM

        from recaption.captioners.text import text_template

        self.template = text_template(cfg)
        self.llm = engine(LLM, cfg)
        self.tokens_generated = 0
        self.captions_generated = 0

    @property
    def image_size(self) -> int:
        """No image is read (0)."""
        return 0

    def _generate(self, images, contexts):
        return self.chat(text_conversations(self.template, contexts))
