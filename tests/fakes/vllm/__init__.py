"""A stand-in for vLLM's documented offline API, so the vLLM captioner runs end to end on a CPU
(tests put tests/fakes first on sys.path). It keeps the contract the documentation states
(docs.vllm.ai, "Offline Inference" and "Multimodal Inputs"):

    llm = LLM(model=..., **engine_args)
    outs = llm.generate([{"prompt": str, "multi_modal_data": {"image": PIL image}}, ...],
                        SamplingParams(n=..., temperature=..., ...))   # RequestOutput, in input order
    outs = llm.chat([{"role": "user", "content": [{"type": "text", "text": ...},
                                                  {"type": "image_url", "image_url": {"url": ...}}]}])

(a conversation may be text alone, its contents plain strings, as in the documentation's
examples/offline_inference/chat.py: the chained caption groups' vllm-text backend sends those)
and refuses what vLLM refuses (an unknown engine or sampling argument, a prompt that is not a
string, an image that is not a PIL image, more images per prompt than `limit_mm_per_prompt`).
Its text is a function of the image, the prompt, the seed and the sampling settings only, so a
test can tell what each request got. No model, no GPU."""
from __future__ import annotations

import base64
import io
import random
from dataclasses import dataclass, field

__version__ = "0.0.fake"

ENGINE_ARGS = {"tokenizer", "revision", "tokenizer_revision", "trust_remote_code", "dtype", "seed", "quantization",
               "limit_mm_per_prompt", "max_model_len", "gpu_memory_utilization", "max_num_seqs",
               "tensor_parallel_size", "enforce_eager", "mm_processor_kwargs", "download_dir"}
SAMPLING = {"n": 1, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "seed": None, "max_tokens": 16,
            "min_tokens": 0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "stop": None, "logprobs": None}
WORDS = ("red", "green", "blue", "small", "large", "bright", "dark", "object", "scene", "photo")


class SamplingParams:
    """Sampling settings, checked as vLLM checks them."""

    def __init__(self, **kw):
        bad = set(kw) - set(SAMPLING)
        if bad:
            raise TypeError(f"SamplingParams.__init__() got an unexpected keyword argument {sorted(bad)[0]!r}")
        for k, v in (SAMPLING | kw).items():
            setattr(self, k, v)
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens):
            raise ValueError(f"min_tokens must be in [0, max_tokens], got {self.min_tokens}.")


@dataclass
class CompletionOutput:
    """One generated sequence."""

    index: int
    text: str
    token_ids: list = field(default_factory=list)
    finish_reason: str = "length"


@dataclass
class RequestOutput:
    """The outputs of one prompt."""

    request_id: str
    prompt: str
    outputs: list


class LLM:
    """The offline engine: every call is recorded in `requests` (prompt, image size) for tests."""

    instances: list = []

    def __init__(self, model: str, **kw):
        bad = set(kw) - ENGINE_ARGS
        if bad:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {sorted(bad)[0]!r}")
        self.model, self.args = model, kw
        self.limit = (kw.get("limit_mm_per_prompt") or {}).get("image", 1)
        self.requests: list = []
        LLM.instances.append(self)

    def generate(self, prompts, sampling_params=None, use_tqdm: bool = True, lora_request=None):
        """One RequestOutput per prompt, in input order."""
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        params = sampling_params or SamplingParams()
        return [self._one(i, p, params) for i, p in enumerate(prompts)]

    def chat(self, messages, sampling_params=None, use_tqdm: bool = True, chat_template=None,
             add_generation_prompt: bool = True):
        """Conversations (one, or a list of them) as prompts: text parts joined, images decoded."""
        convs = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = []
        for conv in convs:
            text, images = [], []
            for m in conv:
                content = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
                for part in content:
                    if part["type"] == "text":
                        text.append(part["text"])
                    elif part["type"] == "image_url":
                        images.append(_from_url(part["image_url"]["url"]))
                    elif part["type"] == "image_pil":
                        images.append(part["image_pil"])
                    else:
                        raise ValueError(f"Unknown part type: {part['type']}")
            prompts.append({"prompt": "\n".join(text), "multi_modal_data": {"image": images[0] if len(images) == 1
                                                                           else images}} if images
                           else {"prompt": "\n".join(text)})
        return self.generate(prompts, sampling_params, use_tqdm)

    def _one(self, i: int, p, params: SamplingParams) -> RequestOutput:
        from PIL import Image

        if isinstance(p, str):
            p = {"prompt": p}
        if not isinstance(p, dict) or not isinstance(p.get("prompt"), str):
            raise TypeError(f"a prompt is a string or a dict with a 'prompt' string, got {type(p).__name__}")
        mm = p.get("multi_modal_data") or {}
        bad = set(mm) - {"image"}
        if bad:
            raise ValueError(f"this model takes image inputs only, got {sorted(bad)}")
        images = mm.get("image")
        images = [] if images is None else images if isinstance(images, list) else [images]
        if len(images) > self.limit:
            raise ValueError(f"You set image={self.limit} (or defaulted to 1) in `--limit-mm-per-prompt`, "
                             f"but passed {len(images)} images in the same prompt.")
        for im in images:
            if not isinstance(im, Image.Image):
                raise TypeError(f"an image input is a PIL image, got {type(im).__name__}")
        self.requests.append({"prompt": p["prompt"], "images": [im.size for im in images]})
        seed = params.seed if params.seed is not None else self.args.get("seed", 0)
        outs = []
        for j in range(params.n):
            outs.append(CompletionOutput(j, _text(images, p["prompt"], params, seed, j)))
        return RequestOutput(str(len(self.requests) - 1), p["prompt"], outs)


def describe(image) -> str:
    """What the fake model says of an image: its size and mean colour."""
    small = image.convert("RGB").resize((4, 4))
    data = small.tobytes()
    r, g, b = (sum(data[c::3]) // 16 for c in range(3))
    return f"a {image.size[0]}x{image.size[1]} image of colour {r},{g},{b}"


def _text(images, prompt: str, params: SamplingParams, seed: int, j: int) -> str:
    import zlib

    # a text-only prompt's answer names its prompt (a digest), so a test tells which row got which
    head = " and ".join(describe(im) for im in images) or f"text {zlib.crc32(prompt.encode()):08x}"
    if params.temperature == 0:
        tail = []
    else:
        rng = random.Random(f"{seed}/{j}/{prompt}/{head}")
        tail = [rng.choice(WORDS) for _ in range(3)]
    words = (head + " " + " ".join(tail)).split()
    return " " + " ".join(words[: max(params.max_tokens or len(words), params.min_tokens)])


def _from_url(url: str):
    from PIL import Image

    if not url.startswith("data:image/"):
        raise ValueError("the fake takes images as data URLs only (nothing is fetched)")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
