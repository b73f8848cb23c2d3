"""The captioner interface, its configuration, presets (YAML data files) and the one factory."""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from recaption.errors import RecaptionError, unknown
from recaption.registry import Registry, load

log = logging.getLogger("recaption")
PRESETS_DIR = Path(__file__).parent / "presets"
STRATEGIES = ("greedy", "beam", "sample")
QUANTIZE = ("8bit", "4bit")


@dataclass(frozen=True)
class Backend:
    """A captioner backend as a declaration: where its captioner class lives ("module:Class",
    imported only when used), what it needs installed, and `serves(model)`, whether it serves a
    model id or local folder (cheap: names and config files, no model), which `guess_backend` asks."""

    target: str  # "module:Class" of a `Captioner` subclass
    requires: tuple[tuple[str, str], ...] = ()  # (module, extra) pairs
    serves: Callable[[str], bool] | None = None  # None: only chosen by name (--backend, a preset)
    chat: bool = False  # prompts are chat templates (prompts/templates, `--template`), not `--prompt` alone
    engine_args: bool = False  # takes `engine_args` (recorded with the captions group's settings); else refused
    check: str | None = None  # "module:function": refuses a config it cannot run (one line), before any shard is read
    images: bool = True  # False: a text model (chained caption groups), handed a `chat.Context` per sample
    # the families (`folder_family`) of local folders it cannot load: a preset's checkpoint swapped
    # (`--model`) for another family's is refused up front, not in every shard's model load
    cannot_load: tuple[str, ...] = ()


def _builtin_guess(model: str) -> str | None:
    """Which built-in backend serves a model id or local folder, from its name or its config files."""
    m = model.lower()
    if "coca" in m:
        return "coca"
    if "blip2" in m or "blip-2" in m:
        return "blip2"
    if "blip" in m:
        return "blip"
    if Path(model).is_dir():
        cfg = Path(model) / "config.json"
        if cfg.is_file():
            text = cfg.read_text()
            if '"blip-2"' in text or "Blip2" in text:
                return "blip2"
            if '"blip"' in text or "BlipFor" in text:
                return "blip"
        if (Path(model) / "open_clip_config.json").is_file():
            return "coca"
    return None


def _serves(name: str, model: str) -> bool:
    return _builtin_guess(model) == name


# transformers' model_type of each image-text-to-text family the vlm backend serves, and the
# names hub ids go by.
VLM_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "llava", "llava_next", "idefics3", "smolvlm", "florence2")
VLM_ID = re.compile(r"qwen2(\.5)?-vl|qwen2_5_vl|qwen2_vl|llava|idefics3|smolvlm|florence-?2", re.I)


def _serves_vlm(model: str) -> bool:
    """A local folder whose config.json names a VLM family's model_type, or a hub id named like one."""
    cfg = Path(model).expanduser() / "config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text()).get("model_type") in VLM_MODEL_TYPES
        except (OSError, ValueError):
            return False
    return not Path(model).expanduser().exists() and bool(VLM_ID.search(model))


def _check_backend(name: str, b) -> None:
    if not isinstance(b, Backend):
        raise RecaptionError(f"captioner backend {name!r}: {b!r} is not a Backend declaration "
                             "(recaption.captioners.base.Backend)")


# The registry: a new backend is one module plus one `BACKENDS.register` line (or an entry point of
# the `recaption.captioners` group naming its Backend declaration).
BACKENDS = Registry("captioner backend", "recaption.captioners", _check_backend)
for _name, _backend in {
    "blip": Backend("recaption.captioners.hf:HFCaptioner", serves=functools.partial(_serves, "blip"),
                    cannot_load=("blip2", "vlm", "coca")),
    "blip2": Backend("recaption.captioners.hf:HFCaptioner", serves=functools.partial(_serves, "blip2"),
                     cannot_load=("blip", "vlm", "coca")),
    "coca": Backend("recaption.captioners.coca:CocaCaptioner", serves=functools.partial(_serves, "coca"),
                    cannot_load=("blip", "blip2", "vlm")),
    "vllm": Backend("recaption.captioners.vllm:VLLMCaptioner", (("vllm", "vllm"),), chat=True, engine_args=True,
                    check="recaption.captioners.vllm:check_config"),
    "vlm": Backend("recaption.captioners.vlm:VLMCaptioner", serves=_serves_vlm, chat=True, engine_args=True,
                   check="recaption.captioners.vlm:check_config", cannot_load=("coca",)),
    # text-to-text steps of chained and fused caption groups (chosen by name: --backend or a preset)
    "text": Backend("recaption.captioners.text:TextCaptioner", chat=True, images=False),
    "vllm-text": Backend("recaption.captioners.vllm:VLLMTextCaptioner", (("vllm", "vllm"),), chat=True, images=False,
                         engine_args=True, check="recaption.captioners.vllm:check_config"),
}.items():
    BACKENDS.register(_name, _backend, builtin=True)


@dataclass
class Decoding:
    """How a captioner decodes: strategy, candidates per image, lengths, sampling and beam settings."""
    strategy: str = "greedy"  # greedy | beam | sample (nucleus / top-k)
    num_captions: int = 1
    num_beams: int = 4
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    max_new_tokens: int | None = 30
    min_new_tokens: int | None = None
    max_length: int | None = None  # BLIP-style total length, prompt included (SIEVE's setting)
    min_length: int | None = None
    repetition_penalty: float = 1.0
    seed: int = 0

    def validate(self) -> "Decoding":
        """Refuse settings no decoder can honour; returns self."""
        if self.strategy not in STRATEGIES:
            raise unknown("decoding strategy", self.strategy, STRATEGIES)
        if self.num_captions < 1:
            raise RecaptionError("num_captions must be at least 1")
        if self.strategy == "greedy" and self.num_captions > 1:
            raise RecaptionError("greedy decoding gives one caption; use strategy 'sample' or 'beam' for more")
        if self.strategy == "beam" and self.num_beams < self.num_captions:
            raise RecaptionError(f"beam search needs num_beams >= num_captions "
                                 f"({self.num_beams} < {self.num_captions})")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise RecaptionError(f"top_p must be in (0, 1], got {self.top_p}")
        return self


@dataclass
class CaptionerConfig:
    """Everything that builds a captioner in a worker (picklable): backend, model, prompt, decoding,
    dtype, quantization."""
    backend: str = "blip"
    model: str = "Salesforce/blip-image-captioning-base"
    revision: str | None = None
    prompt: str | None = None  # text prompt; removed from the front of every caption
    template: str | None = None  # VLMs: a chat prompt template, a name in prompts/templates or a file
    decoding: Decoding = field(default_factory=Decoding)
    device: str | None = None
    dtype: str | None = None
    quantize: str | None = None  # None | 8bit | 4bit (bitsandbytes)
    batch_size: int = 32
    image_size: int | None = None  # input size, for decoding JPEGs in draft mode
    trust_remote_code: bool = False
    engine_args: dict = field(default_factory=dict)  # vLLM LLM(...) extras
    name: str | None = None  # preset name, for reports

    @property
    def id(self) -> str:
        """The model id as recorded in the `captioner` column (with its revision, if any)."""
        return self.model if not self.revision else f"{self.model}@{self.revision}"


def _merge(dc, values: dict, where: str):
    names = {f.name for f in dataclasses.fields(dc)}
    for k, v in values.items():
        if k not in names:
            raise RecaptionError(f"{where}: unknown key {k!r}; known: {', '.join(sorted(names))}")
        if k == "decoding" and isinstance(v, str):  # `decoding: beam` means the strategy
            v = {"strategy": v}
        if k == "decoding" and not isinstance(v, dict):
            raise RecaptionError(f"{where}: decoding takes a strategy name or a mapping of decoding options")
        if k == "decoding":
            _merge(dc.decoding, v, f"{where}.decoding")
        else:
            setattr(dc, k, v)
    return dc


def list_presets() -> dict[str, dict]:
    """Every preset file, by name."""
    out = {}
    for p in sorted(PRESETS_DIR.glob("*.yaml")):
        out[p.stem] = yaml.safe_load(p.read_text())
    return out


def load_preset(name_or_model: str, **overrides) -> CaptionerConfig:
    """A preset name, a YAML file, or a model id/path (backend guessed from the name)."""
    p = Path(name_or_model)
    if (PRESETS_DIR / f"{name_or_model}.yaml").is_file():
        data = yaml.safe_load((PRESETS_DIR / f"{name_or_model}.yaml").read_text())
        data.setdefault("name", name_or_model)
    elif p.suffix in (".yaml", ".yml") and p.is_file():
        data = yaml.safe_load(p.read_text())
    else:
        _check_model_ref(name_or_model, overrides.get("backend"))
        data = {"backend": overrides.get("backend") or guess_backend(name_or_model), "model": name_or_model,
                "name": name_or_model}
    data.pop("description", None)
    cfg = _merge(CaptionerConfig(), data, name_or_model)
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: CaptionerConfig, overrides: dict) -> CaptionerConfig:
    """Apply option overrides (captioner fields and decoding fields) to a config, validating the result."""
    known = [f.name for f in dataclasses.fields(CaptionerConfig)] + [f.name for f in dataclasses.fields(Decoding)]
    bad = next((k for k in overrides if k not in known), None)
    if bad is not None:  # one line with the nearest setting, not only the ones of one dataclass
        raise unknown("captioner setting", bad, sorted(known))
    dec = {k: v for k, v in overrides.items() if k in {f.name for f in dataclasses.fields(Decoding)} and v is not None}
    top = {k: v for k, v in overrides.items() if k not in dec and v is not None}
    if "model" in top:
        _check_model_ref(top["model"], top.get("backend") or cfg.backend)
    _merge(cfg, top, "captioner option")
    _merge(cfg.decoding, dec, "decoding option")
    backend = BACKENDS.get(cfg.backend)  # an unknown one: the nearest names
    if cfg.template is not None:
        if not backend.chat:
            chat = [n for n in BACKENDS.names() if BACKENDS.get(n).chat]
            raise RecaptionError(f"--template is a VLM's chat prompt ({', '.join(chat)} backends); the "
                                 f"{cfg.backend} backend takes --prompt")
        from recaption.captioners.chat import load_template

        refs = load_template(cfg.template).refs()  # unknown or malformed: said before any work
        if refs and backend.images:  # filled by a chained group only: a VLM would read the marker itself
            text = [n for n in BACKENDS.names() if not BACKENDS.get(n).images]
            raise RecaptionError(f"template {cfg.template}: {{caption:{refs[0] or ''}}} is read by a text model's "
                                 f"caption group (backends {', '.join(text)}), not the {cfg.backend} backend")
    if cfg.quantize not in (None, *QUANTIZE):
        raise RecaptionError(f"--quantize takes {' or '.join(QUANTIZE)}, got {cfg.quantize!r}")
    cfg.decoding.validate()
    check_config(cfg)
    return cfg


def folder_family(model: str) -> tuple[str, str] | None:
    """(family, what its config says) of a local model folder, from its config files alone (not its
    name); None where it has none or they do not tell."""
    d = Path(str(model).removeprefix("local-dir:")).expanduser()
    if (d / "open_clip_config.json").is_file():
        return "coca", "an open_clip model"
    try:
        model_type = json.loads((d / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    family = ("vlm" if model_type in VLM_MODEL_TYPES else "blip2" if model_type == "blip-2"
              else "blip" if model_type == "blip" else None)
    return (family, f"model_type {model_type}") if family else None


def check_config(cfg: CaptionerConfig) -> None:
    """What the config's backend cannot run, refused in one line before any shard is read (not in
    every worker, shard by shard): a local checkpoint of a family it does not load, engine_args it
    does not take, and the backend's own `check`."""
    backend = BACKENDS.get(cfg.backend)
    family = folder_family(cfg.model) if cfg.model else None
    if family and family[0] in backend.cannot_load:
        fix = (f"--backend {family[0]}" if cfg.name in (None, cfg.model)
               else f"-c {cfg.model} (backend from its config) or --backend {family[0]}")
        raise RecaptionError(f"captioner model {cfg.model}: its config says {family[1]} (the {family[0]} backend's), "
                             f"which the {cfg.backend} backend of {cfg.name or 'this captioner'} does not load; "
                             f"give {fix}")
    if not isinstance(cfg.engine_args, dict):
        raise RecaptionError(f"engine_args must be a mapping, got {cfg.engine_args!r}")
    if cfg.engine_args and not backend.engine_args:
        takes = [n for n in BACKENDS.names() if BACKENDS.get(n).engine_args]
        raise RecaptionError(f"engine_args {sorted(cfg.engine_args)[0]!r}: the {cfg.backend} backend takes no "
                             f"engine_args (the {' and '.join(takes)} backends do)")
    if backend.check is not None:
        load(backend.check, f"captioner backend {cfg.backend!r} check")(cfg)


def _check_model_ref(ref: str, backend: str | None):
    """A path that does not exist, or a bare word that is no preset, is a user error, said plainly."""
    if ref.startswith(("local-dir:", "hf-hub:")):
        path = ref.split(":", 1)[1]
        if ref.startswith("local-dir:") and not Path(path).expanduser().is_dir():
            raise RecaptionError(f"model folder not found: {path}")
        return
    looks_local = ref.startswith(("/", "./", "../", "~")) or ref.endswith((".yaml", ".yml"))
    if looks_local and not Path(ref).expanduser().exists():
        raise RecaptionError(f"model path not found: {ref}")
    if "/" not in ref and ":" not in ref and not Path(ref).exists() and backend is None and "coca" not in ref.lower():
        raise unknown("captioner", ref, sorted(list_presets()),
                      ", or a YAML file, a local model folder or a Hugging Face id (org/name)")


def guess_backend(model: str) -> str:
    """The backend that serves a model id or local folder: each registered backend is asked
    (`Backend.serves`); none or several is an error naming them."""
    serving = [n for n in BACKENDS.names() if (BACKENDS.get(n).serves or (lambda _: False))(model)]
    if len(serving) == 1:
        return serving[0]
    if serving:
        raise RecaptionError(f"backends {' and '.join(serving)} all serve {model!r}; pass --backend NAME")
    raise RecaptionError(
        f"cannot tell which backend serves {model!r}; pass --backend {'|'.join(BACKENDS.names())} or use a preset"
    )


class Captioner:
    """Subclasses implement `_generate(images, raw_captions) -> list[list[str]]`; for the input
    thread's prepare-ahead, `prepare(images)` and `_generate_prepared(prepared, raw_captions)`;
    for the fast input path, `pixel_spec()` and `prepare_pixels(pixels)`."""

    def __init__(self, cfg: CaptionerConfig):
        self.cfg = cfg
        self.id = cfg.id

    @property
    def image_size(self) -> int:
        """The input size this captioner needs (JPEGs decode at no less)."""
        return self.cfg.image_size or 384

    def prepare(self, images):
        """CPU-side inputs for a batch of images (processor, transforms); run ahead of the model by
        the input thread, which has the images only (text inputs are the model thread's: tokenizers
        are not thread-safe). None means the backend takes images as they are."""
        return None

    def caption(self, images, raw_captions, seed_key: str = "", prepared=None) -> list[list[str]]:
        """N cleaned candidates per image. Same seed and batch, same captions."""
        import torch

        seed = (self.cfg.decoding.seed + zlib.crc32(seed_key.encode())) % 2**31
        if prepared is None:
            out = self._with_oom_retry(images, raw_captions, seed)
        else:
            try:
                torch.manual_seed(seed)
                out = self._generate_prepared(prepared, raw_captions)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                out = self._with_oom_retry(images, raw_captions, seed)  # halves from here
        return [[self.clean(c) for c in cands] for cands in out]

    def _generate_prepared(self, prepared, raw_captions) -> list[list[str]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _with_oom_retry(self, images, raws, seed):
        import torch

        try:
            torch.manual_seed(seed)
            return self._generate(images, raws)
        except torch.cuda.OutOfMemoryError:
            if len(images) == 1:
                raise
            half = len(images) // 2
            log.warning("CUDA out of memory at batch %d; retrying as two batches of %d and %d",
                        len(images), half, len(images) - half)
            torch.cuda.empty_cache()
            return (self._with_oom_retry(images[:half], raws[:half], seed)
                    + self._with_oom_retry(images[half:], raws[half:], seed + 1))

    def clean(self, text: str) -> str:
        """One line of caption text, the prompt taken off its front."""
        text = re.sub(r"\s+", " ", text).strip()
        prompt = (self.cfg.prompt or "").strip()
        if prompt and text.lower().startswith(prompt.lower()):
            text = text[len(prompt):].strip()
        return text

    def _generate(self, images, raw_captions) -> list[list[str]]:  # pragma: no cover - abstract
        raise NotImplementedError


def backend_requirements(cfg: CaptionerConfig) -> tuple[tuple[str, str], ...]:
    """(module, extra) pairs a captioner needs installed, so a missing one is reported before any work."""
    needs = BACKENDS.get(cfg.backend).requires
    if cfg.quantize and not cfg.backend.startswith("vllm"):
        needs += (("bitsandbytes", "quant"),)
    return needs


def build_captioner(cfg: CaptionerConfig) -> Captioner:
    """The one factory: imports the backend's module only when it is used; the backend's checks run
    here too, so a captioner built directly refuses what `load_preset` would have."""
    check_config(cfg)
    target = BACKENDS.get(cfg.backend).target
    cls = load(target, f"captioner backend {cfg.backend!r}")
    if not (isinstance(cls, type) and issubclass(cls, Captioner)):
        raise RecaptionError(f"captioner backend {cfg.backend!r}: {target} is not a Captioner class")
    return cls(cfg)
