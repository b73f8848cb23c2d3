"""The vLLM backend around vLLM: prompts, sampling options, outputs. The real path needs a GPU."""
import importlib.util
from types import SimpleNamespace

import pytest

from recaption.captioners.base import Decoding, load_preset
from recaption.captioners.vllm import build_prompt, build_requests, collect, load_template, sampling_kwargs
from recaption.errors import MissingExtra, RecaptionError


def test_templates_and_alt_text():
    t = load_template("qwen2.5-vl-alt-text")
    assert "<|image_pad|>" in t and "{alt_text}" in t and not t.startswith("#")
    p = build_prompt(t, "Eiffel Tower at night, stock photo")
    assert '"Eiffel Tower at night, stock photo"' in p and "{alt_text}" not in p
    assert '""' in build_prompt(t, None)
    assert len(build_prompt(t, "x" * 5000)) < len(t) + 1001
    assert "USER: <image>" in load_template("llava-1.5")


def test_requests_carry_one_image_each():
    reqs = build_requests("<image> {alt_text}", ["IMG1", "IMG2"], ["a", None])
    assert reqs == [{"prompt": "<image> a", "multi_modal_data": {"image": "IMG1"}},
                    {"prompt": "<image> ", "multi_modal_data": {"image": "IMG2"}}]


def test_sampling_kwargs():
    kw = sampling_kwargs(Decoding(strategy="sample", num_captions=4, top_p=0.9, top_k=40, temperature=0.7,
                                  max_new_tokens=50, min_new_tokens=3, repetition_penalty=1.1), seed=5)
    assert kw == {"n": 4, "max_tokens": 50, "min_tokens": 3, "repetition_penalty": 1.1, "seed": 5,
                  "temperature": 0.7, "top_p": 0.9, "top_k": 40}
    assert sampling_kwargs(Decoding())["temperature"] == 0.0
    with pytest.raises(RecaptionError):
        sampling_kwargs(Decoding(strategy="beam"))


def test_collect_keeps_request_order():
    outs = [SimpleNamespace(outputs=[SimpleNamespace(text=" a cat "), SimpleNamespace(text="b")]),
            SimpleNamespace(outputs=[SimpleNamespace(text="c")])]
    assert collect(outs) == [[" a cat ", "b"], ["c"]]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_missing_vllm_names_the_extra():
    from recaption.captioners import build_captioner

    with pytest.raises(MissingExtra, match=r"pip install 'recaption\[vllm\]'"):
        build_captioner(load_preset("qwen2.5-vl-3b"))


def _gpu():
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None or not _gpu(), reason="needs vLLM and a GPU")
def test_real_vllm_captions(shard_dir):  # pragma: no cover - runs only where vLLM and a GPU exist
    from PIL import Image

    from recaption.captioners import build_captioner

    cap = build_captioner(load_preset("qwen2.5-vl-3b", num_captions=2, strategy="sample", top_p=0.9,
                                      max_new_tokens=20))
    out = cap.caption([Image.new("RGB", (64, 64), "red")], ["a red square"], "k")
    assert len(out) == 1 and len(out[0]) == 2 and all(out[0])
