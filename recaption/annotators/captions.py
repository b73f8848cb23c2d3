"""The `captions` group: N synthetic candidates per sample from a captioner (`recaption.captioners`)."""
from __future__ import annotations

import dataclasses
import logging

from recaption.annotators.base import Annotator, Column, Option, is_pixels, model_identity, on_device
from recaption.captioners.base import BACKENDS, QUANTIZE, STRATEGIES
from recaption.errors import RecaptionError
from recaption.models import DTYPES

log = logging.getLogger("recaption")


class Captions(Annotator):
    """Captions every decodable image; a failing batch is retried sample by sample so only the
    bad one errors. Sampling is seeded from the shard name and the batch's first key, so any
    worker gives the same captions."""

    name = "captions"
    kind = "captioner"
    columns = (Column("captions", "list<string>", []), Column("captioner", "string"))
    recipe_keys = ("captioner", "caption", "groups")
    added_settings = ("template_sha256", "engine_args")  # folders written before these were recorded resume
    timer = "caption"
    add_hint = "recaption caption INPUT -o ANN"
    options = (
        Option("captioner", str, "blip-base", "preset (see `recaption models`), YAML file, HF id or local path",
               flags=("--captioner", "-c")),
        Option("model", str, None, "model id or local path replacing the preset's (keeps its decoding)"),
        Option("num_captions", int, None, "candidates per image (sample or beam)"),
        Option("decoding", str, None, "greedy, beam or sample (nucleus / top-k)", choices=STRATEGIES),
        Option("num_beams", int, None, "beams for --decoding beam"),
        Option("top_p", float, None, "nucleus mass for --decoding sample"),
        Option("top_k", int, None, "top-k for --decoding sample"),
        Option("temperature", float, None, "sampling temperature"),
        Option("max_new_tokens", int, None, "longest caption, in tokens"),
        Option("min_new_tokens", int, None, "shortest caption, in tokens"),
        Option("repetition_penalty", float, None, "1.0 = none"),
        Option("seed", int, None, "same seed, same captions"),
        Option("prompt", str, None, "text prompt, removed from the front of each caption"),
        Option("template", str, None, "a VLM's chat prompt template, vlm or vllm backends (name in "
               "prompts/templates or a file); may use {alt_text}"),
        Option("dtype", str, None, "auto: bf16 on CUDA and on CPUs with native bf16, else float32", choices=DTYPES),
        Option("quantize", str, None, "bitsandbytes 8bit or 4bit (needs recaption[quant])", choices=QUANTIZE),
        Option("backend", str, None, "when a model id does not tell which backend serves it", choices=BACKENDS),
        Option("trust_remote_code", bool, False, "allow model repositories to run their own code (off by default)"),
        Option("group", str, None, "a named caption group beside the unnamed one, NAME=CAPTIONER[,OPTION=VALUE...] "
               "(e.g. long=qwen2.5-vl-3b,max_new_tokens=120): its own candidates, CLIP and SIEVE scores and "
               "settings (docs/formats.md#caption-groups); --captioner none: named groups only; a text model's "
               "group reads {caption:GROUP} and takes where=RULE (e.g. fused=capsfus-llama,where=sieve__short<0.25)",
               multiple=True),
    )

    @classmethod
    def configure(cls, values: dict, others: dict):
        """A `CaptionerConfig` from the preset or model named by --captioner and the overrides."""
        from recaption.captioners.base import load_preset

        ref = values.get("captioner") or cls.options[0].default
        if ref == "none":  # the named groups alone (--group)
            return None
        kw = {o.name: values.get(o.name) for o in cls.options[1:] if o.name != "group"}
        kw["strategy"] = kw.pop("decoding")
        if not kw["trust_remote_code"]:
            kw.pop("trust_remote_code")
        return load_preset(str(ref), **{k: v for k, v in kw.items() if v is not None})

    @classmethod
    def coerce(cls, config):
        """A preset name, model id or path given for a config: its `CaptionerConfig`."""
        from recaption.captioners.base import load_preset

        return load_preset(config) if isinstance(config, str) else config

    @classmethod
    def from_recipe(cls, recipe: dict, others: dict):
        """`captioner: PRESET|ID|PATH|null` and `caption: {decoding and captioner options}`."""
        from recaption.captioners.base import load_preset

        if recipe.get("caption") is not None and not isinstance(recipe["caption"], dict):
            raise RecaptionError("caption must be a mapping")
        if not recipe.get("captioner"):
            return None
        return load_preset(str(recipe["captioner"]), **(recipe.get("caption") or {}))

    @classmethod
    def from_mapping(cls, values, others: dict):
        """`{"captioner": PRESET|ID|PATH, ...}` plus what a recipe's `caption` section takes, in one
        mapping (True or empty: the default preset)."""
        rest = dict(values) if isinstance(values, dict) else {}
        if values is not True and not isinstance(values, dict):
            raise RecaptionError("captions takes a preset name, a CaptionerConfig or a mapping of its settings, "
                                 f"got {values!r}")
        return cls.from_recipe({"captioner": rest.pop("captioner", None) or cls.options[0].default,
                                "caption": rest}, others)

    @classmethod
    def settings(cls, c, run) -> dict:
        """Backend, model, prompt, template (its name and, for chat backends, a digest of its text),
        engine_args (where the backend takes them), dtype, quantization and decoding; the batch size
        where sampling is seeded per batch; the input path where it is not the fast one."""
        from recaption.captioners.chat import DEFAULT_TEMPLATE, DEFAULT_TEXT_TEMPLATE, load_template

        s = {"backend": c.backend, "model": model_identity(c.model), "revision": c.revision, "prompt": c.prompt,
             "template": c.template, "dtype": c.dtype or "auto", "quantize": c.quantize,
             "decoding": dataclasses.asdict(c.decoding)}
        backend = BACKENDS.get(c.backend)
        if backend.chat:  # a name says nothing of an edited file: its text does
            default = DEFAULT_TEMPLATE if backend.images else DEFAULT_TEXT_TEMPLATE  # what each kind renders
            s["template_sha256"] = load_template(c.template or default).digest()
        if backend.engine_args:
            s["engine_args"] = c.engine_args
        if c.decoding.strategy == "sample":
            s["batch_size"] = run.batch_size
        if run.preprocess != "fast":
            s["preprocess"] = run.preprocess
        return s

    @classmethod
    def check(cls, c) -> None:
        """What would fail at build time, said before any work: a missing package, settings the
        backend cannot run (a config object given directly skips `load_preset`'s checks)."""
        from recaption.captioners.base import BACKENDS, backend_requirements, check_config
        from recaption.errors import require

        if not BACKENDS.get(c.backend).images:  # it would be handed the alt-text alone, markers unfilled
            raise RecaptionError(f"{c.backend} is a text model: it writes a chained caption group "
                                 f"(--group NAME={c.name or c.model}), not the unnamed group's captions of images")
        for module, extra in backend_requirements(c):
            require(module, extra)
        check_config(c)

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        from recaption.captioners import build_captioner

        self.captioner = build_captioner(on_device(config, ctx.device))
        self.id = self.captioner.id

    def image_models(self) -> dict:
        """The captioner reads pixels."""
        return {"captioner": self.captioner}

    def annotate_batch(self, batch) -> None:
        """Record the captioner on every row; caption the decodable ones."""
        for r in batch.rows:
            r["captioner"] = self.id
        idx = batch.live()
        if not idx:
            return
        rows = [batch.rows[i] for i in idx]
        prepared = batch.batched(self.captioner, idx)
        if is_pixels(prepared):
            prepared = self.captioner.prepare_pixels(prepared)
        out = self._isolating(rows, batch.inputs(self.captioner, idx), batch.shard, prepared)
        for r, c in zip(rows, out):
            if c is not None:
                r["captions"] = c

    def _isolating(self, rows, images, shard, prepared=None):
        try:
            return self.captioner.caption(images, [r["raw_caption"] for r in rows], f"{shard}/{rows[0]['key']}",
                                          prepared)
        except Exception as e:
            if len(images) == 1:
                rows[0].update(status="error", error=f"caption: {type(e).__name__}: {e}")
                return [None]
            log.warning("captioning a batch of %s failed (%s); retrying sample by sample", shard, e)
            return [self._isolating([r], [im], shard)[0] for r, im in zip(rows, images)]
