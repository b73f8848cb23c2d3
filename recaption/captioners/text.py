"""Text-to-text steps (chained and fused caption groups) on a causal LM through transformers:
`AutoModelForCausalLM` and its tokenizer, the prompt rendered by the tokenizer's own chat template
(or the template's text alone where the tokenizer has none, as CapsFusion's fine-tuned LLaMA
expects: a plain completion prompt ending in "New Sentence:").

It reads no pixels: `caption(images, contexts)` is handed one `chat.Context` per sample (the
alt-text, and the best candidate of each group its template reads), the images only for their
count. The tokenizer is used by the model thread alone.
"""
from __future__ import annotations

from recaption.captioners.base import Captioner, CaptionerConfig
from recaption.captioners.chat import DEFAULT_TEXT_TEMPLATE, IMAGE, load_template
from recaption.errors import RecaptionError


def text_template(cfg: CaptionerConfig):
    """A text model's template: the configured one (default `chat.DEFAULT_TEXT_TEMPLATE`), refused
    where it places an image."""
    from recaption.resources import named_or_path

    name = cfg.template or DEFAULT_TEXT_TEMPLATE
    lines = named_or_path("templates", name, ".txt").read_text(encoding="utf-8").splitlines()
    if any(IMAGE in ln for ln in lines if not ln.startswith("#")):  # written for a VLM
        raise RecaptionError(f"prompt template {name}: the {cfg.backend} backend reads no image; drop {IMAGE}")
    return load_template(name)


class TextCaptioner(Captioner):
    """A causal LM that writes a caption from text (an alt-text, other groups' captions), batched."""

    def __init__(self, cfg: CaptionerConfig):
        super().__init__(cfg)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from recaption.captioners.hf import quantization_config
        from recaption.captioners.vlm import generate_kwargs
        from recaption.models import quiet_hub, resolve_device, resolve_dtype

        quiet_hub()
        self.template = text_template(cfg)
        self.gen_kwargs = generate_kwargs(cfg)
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        common = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, **common)
        self.tokenizer.padding_side = "left"  # a batch generates after each prompt's last token
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        q = quantization_config(cfg.quantize, self.dtype)
        load = {"dtype": self.dtype} | ({"quantization_config": q, "device_map": {"": self.device}} if q else {})
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model, **common, **load).eval()
        if q is None:
            self.model.to(self.device)
        self.chat = getattr(self.tokenizer, "chat_template", None) is not None
        self.tokens_generated = 0
        self.captions_generated = 0

    @property
    def image_size(self) -> int:
        """No image is read; the decode pool is never asked for one (0)."""
        return 0

    def prompts(self, contexts) -> list[str]:
        """Each sample's prompt: its conversation as the tokenizer's chat template renders it, or
        the template's text alone where it has none."""
        if not self.chat:
            return [self.template.plain(c) for c in contexts]
        convs = [self.template.text_messages(c) for c in contexts]
        return [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in convs]

    def _generate(self, images, contexts):
        import torch

        from recaption.captioners.vlm import count_new_tokens

        enc = self.tokenizer(self.prompts(contexts), return_tensors="pt", padding=True,
                             add_special_tokens=not self.chat)  # a chat template writes its own
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode():
            out = self.model.generate(**enc, **self.gen_kwargs, pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        self.tokens_generated += count_new_tokens(new, self.model.generation_config.eos_token_id,
                                                  self.tokenizer.pad_token_id)
        self.captions_generated += len(new)
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        n = self.cfg.decoding.num_captions
        return [texts[i * n:(i + 1) * n] for i in range(len(contexts))]
