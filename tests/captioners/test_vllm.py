"""The vLLM backend around vLLM: prompts, sampling options, outputs. The real path needs a GPU."""
import importlib.util
from types import SimpleNamespace

import pytest

from recaption.captioners.base import Decoding, load_preset
from recaption.captioners.chat import load_template
from recaption.captioners.vllm import build_conversations, collect, sampling_kwargs
from recaption.errors import MissingExtra, RecaptionError


def test_conversations_carry_one_image_each_and_their_alt_text():
    t = load_template("qwen2.5-vl-alt-text")
    convs = build_conversations(t, ["IMG1", "IMG2"], ["Eiffel Tower at night", None])
    assert [c[0] for c in convs] == [{"role": "system", "content": [{"type": "text",
                                                                    "text": "You are a helpful assistant."}]}] * 2
    (user,) = [m for m in convs[0] if m["role"] == "user"]
    assert user["content"][0] == {"type": "image_pil", "image_pil": "IMG1"}
    assert '"Eiffel Tower at night"' in user["content"][1]["text"]
    assert '""' in convs[1][1]["content"][1]["text"]
    assert [p for p in convs[1][1]["content"] if p["type"] == "image_pil"] == [{"type": "image_pil",
                                                                               "image_pil": "IMG2"}]


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


# -- the whole path on the documented API, on a CPU ---------------------------------------------
FAKES = __import__("pathlib").Path(__file__).parents[1] / "fakes"


@pytest.fixture
def fake_vllm(monkeypatch):
    """tests/fakes/vllm (vLLM's documented offline API, no model) importable as `vllm`."""
    import sys

    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    import vllm

    assert vllm.__version__ == "0.0.fake"
    vllm.LLM.instances.clear()
    yield vllm
    sys.modules.pop("vllm", None)


def test_the_fake_keeps_the_documented_contract(fake_vllm):
    from PIL import Image

    llm = fake_vllm.LLM(model="m", limit_mm_per_prompt={"image": 1})
    red = Image.new("RGB", (8, 6), "red")
    (o,) = llm.generate({"prompt": "USER: <image>\nWhat is it?", "multi_modal_data": {"image": red}},
                        fake_vllm.SamplingParams(n=2, temperature=0.0, max_tokens=20))
    assert [c.text for c in o.outputs] == [" a 8x6 image of colour 255,0,0"] * 2
    with pytest.raises(TypeError, match="unexpected keyword argument 'beams'"):
        fake_vllm.SamplingParams(beams=2)
    with pytest.raises(ValueError, match="2 images in the same prompt"):
        llm.generate({"prompt": "x", "multi_modal_data": {"image": [red, red]}})
    with pytest.raises(TypeError, match="PIL image"):
        llm.generate({"prompt": "x", "multi_modal_data": {"image": b"jpeg bytes"}})
    buf = __import__("io").BytesIO()
    red.save(buf, format="PNG")
    url = "data:image/png;base64," + __import__("base64").b64encode(buf.getvalue()).decode()
    (c,) = llm.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                  {"type": "text", "text": "What is it?"}]}],
                    fake_vllm.SamplingParams(temperature=0.0))
    assert c.outputs[0].text.startswith(" a 8x6 image of colour 255,0,0")


def test_the_vllm_captioner_runs_end_to_end_on_the_fake(fake_vllm, shard_dir, tmp_path, caplog):
    """`recaption caption -c qwen2.5-vl-3b` through the CLI: the preset's engine arguments reach
    LLM(...), each decodable image is one chat conversation with its alt-text in the prompt, sampling
    gives N candidates, and the input thread's prepare-ahead (the exact path: vLLM has no pixel
    spec) runs without the TypeError it once logged for every batch."""
    import logging

    import pyarrow.parquet as pq

    from tests.helpers import cli

    out = tmp_path / "ann"
    with caplog.at_level(logging.WARNING, logger="recaption"):
        assert cli("caption", shard_dir, "-o", out, "-c", "qwen2.5-vl-3b", "--num-captions", 2,
                   "--decoding", "sample", "--top-p", 0.9, "--template", "qwen2.5-vl-alt-text", "--device", "cpu",
                   "-q") == 0
    assert not [r for r in caplog.records if "prepar" in r.getMessage()], caplog.text
    (llm,) = fake_vllm.LLM.instances
    assert llm.model == "Qwen/Qwen2.5-VL-3B-Instruct" and llm.args["max_model_len"] == 4096
    rows = [r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and len(llm.requests) == len(ok)
    for r in ok:
        assert r["captioner"] == "Qwen/Qwen2.5-VL-3B-Instruct" and len(r["captions"]) == 2
        assert all(c.startswith("a ") and "image of colour" in c for c in r["captions"]), r["captions"]
    prompts = {q["prompt"] for q in llm.requests}
    # vLLM's chat API got the template's message text (it renders the model's own markup itself)
    text = load_template("qwen2.5-vl-alt-text").after.split("{alt_text}")[-1]
    assert all(text in p and "<|im_start|>" not in p for p in prompts), prompts
    raw = [r["raw_caption"] for r in ok if r["raw_caption"]]
    assert raw and all(any(a in p for p in prompts) for a in raw)  # the alt-text reached its prompt
