import logging

import pytest
import torch
from PIL import Image

from recaption.captioners import build_captioner, list_presets, load_preset
from recaption.captioners.coca import decode, step_logits
from recaption.errors import RecaptionError

IMAGES = [Image.new("RGB", (70, 50), c) for c in ("red", "blue", "green")]


@pytest.fixture
def one_thread():
    """Torch on one thread while a test compares float32 results of two computations: the thread
    count earlier tests leave (engines and stages set it) changes the kernels' rounding."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("strategy,extra", [
    ("greedy", {}),
    ("sample", {"num_captions": 3, "top_p": 0.9, "top_k": 20, "temperature": 0.8}),
    ("beam", {"num_captions": 2, "num_beams": 3}),
])
@pytest.mark.parametrize("which", ["blip", "blip2", "blip2t5", "coca"])
def test_n_candidates_deterministic_under_seed(tiny_models, which, strategy, extra):
    backend = "blip2" if which.startswith("blip2") else None
    cfg = load_preset(tiny_models[which], backend=backend, strategy=strategy, max_new_tokens=5, seed=7, **extra)
    cap = build_captioner(cfg)
    a = cap.caption(IMAGES, [None] * 3, "s/k")
    assert len(a) == 3 and all(len(c) == extra.get("num_captions", 1) for c in a)
    assert all(isinstance(x, str) for c in a for x in c)
    assert a == cap.caption(IMAGES, [None] * 3, "s/k")
    if strategy == "sample":
        cfg2 = load_preset(tiny_models[which], backend=backend, strategy=strategy, max_new_tokens=5, seed=8, **extra)
        assert build_captioner(cfg2).caption(IMAGES, [None] * 3, "s/k") != a


def test_prompt_is_removed(tiny_models):
    cap = build_captioner(load_preset("sieve", model=tiny_models["blip"], num_captions=2, max_length=12))
    out = cap.caption(IMAGES, [None] * 3, "x")
    assert all(not c.lower().startswith("a picture of") for cands in out for c in cands)
    # the prompt really was fed: the raw decode starts with it
    inputs = cap.processor(images=IMAGES[:1], text=["a picture of "], return_tensors="pt")
    raw = cap.processor.batch_decode(cap.model.generate(**inputs, max_new_tokens=3), skip_special_tokens=True)
    assert raw[0].startswith("a picture of")


def test_sieve_preset_matches_spec():
    p = list_presets()["sieve"]
    assert p["prompt"] == "a picture of " and p["backend"] == "blip"
    assert p["decoding"] == {"strategy": "sample", "top_p": 0.9, "num_captions": 8, "max_length": 20,
                             "min_length": 5, "repetition_penalty": 1.1}


def test_required_presets_exist():
    assert {"blip-base", "blip-large", "blip2-opt-2.7b", "blip2-opt-2.7b-8bit", "blip2-flan-t5-xl",
            "coca-vit-l-14", "sieve", "qwen2.5-vl-3b", "llava-1.5-7b"} <= set(list_presets())


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["8bit", "4bit"])
def test_blip2_quantized_loads_and_generates(tiny_models, quantize, caplog):
    import bitsandbytes as bnb

    cap = build_captioner(load_preset(tiny_models["blip2"], backend="blip2", quantize=quantize, max_new_tokens=4))
    layer = bnb.nn.Linear8bitLt if quantize == "8bit" else bnb.nn.Linear4bit
    assert any(isinstance(m, layer) for m in cap.model.modules()), f"no {quantize} layers in the loaded model"
    with caplog.at_level(logging.WARNING):
        out = cap.caption(IMAGES[:2], [None, None], "q")
        cap.caption(IMAGES[:2], [None, None], "q2")
    assert len(out) == 2 and all(len(c) == 1 for c in out)
    # 8-bit on CPU warns "MatMul8bitLt: inputs will be cast ..." on every matmul: shown once
    said = [r.getMessage() for r in caplog.records if r.name.startswith("bitsandbytes")]
    assert len(said) == len(set(said)), said


def test_coca_decode_matches_the_models_forward_pass(tiny_models, one_thread):
    cap = build_captioner(load_preset(tiny_models["coca"], max_new_tokens=6, dtype="float32"))  # exact maths
    m = cap.model
    x = torch.stack([cap.preprocess(im) for im in IMAGES])
    with torch.no_grad():
        _, embs = m._encode_image(x)
        ids = decode(m, embs, [cap.sot], cap.eot, cap.cfg.decoding, cap.max_context)
        gen = ids[0][0]
        seq = torch.tensor([[cap.sot] + gen + [cap.eot]])  # a trailing token: forward drops the last
        full = m(x[:1], seq)["logits"][0]  # teacher-forced logits over the whole sequence
        assert len(gen) >= 1
        for i in range(1, len(gen) + 1):
            step = step_logits(m, embs[:1], seq[:, :i])[0]
            assert torch.allclose(step, full[i - 1].float(), atol=5e-4)  # other kernels, other rounding
            assert int(full[i - 1].argmax()) == gen[i - 1]  # greedy picked the forward pass's argmax


def test_bad_decoding_options_are_clear():
    with pytest.raises(RecaptionError, match="greedy decoding gives one caption"):
        load_preset("blip-base", num_captions=3)
    with pytest.raises(RecaptionError, match="num_beams >= num_captions"):
        load_preset("blip-base", strategy="beam", num_beams=2, num_captions=3)
    with pytest.raises(RecaptionError, match="unknown captioner setting"):
        load_preset("blip-base", colour="red")
    with pytest.raises(RecaptionError, match="8bit or 4bit"):
        load_preset("blip-base", quantize="3bit")


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(RecaptionError, match="model path not found"):
        load_preset(str(tmp_path / "nope"))
    with pytest.raises(RecaptionError, match="model folder not found"):
        load_preset(f"local-dir:{tmp_path}/nope")
    with pytest.raises(RecaptionError, match="cannot tell which backend"):
        load_preset("org/mystery-model")


def _folder(path, name, text):
    path.mkdir()
    (path / name).write_text(text)
    return str(path)


def test_a_checkpoint_of_a_family_its_backend_does_not_load_is_refused_up_front(tmp_path, shard_dir, capsys):
    from tests.helpers import cli

    qwen = _folder(tmp_path / "q", "config.json", '{"model_type": "qwen2_vl"}')
    blip = _folder(tmp_path / "b", "config.json", '{"model_type": "blip"}')
    coca = _folder(tmp_path / "coca", "open_clip_config.json", "{}")
    # README: `--model` keeps a preset's settings and swaps the checkpoint; another family's is one line
    with pytest.raises(RecaptionError, match=r"model_type qwen2_vl \(the vlm backend's\).*blip backend of sieve"):
        load_preset("sieve", model=qwen)
    with pytest.raises(RecaptionError, match="open_clip model .*vlm backend of qwen2-vl-2b-transformers"):
        load_preset("qwen2-vl-2b-transformers", model=coca)
    with pytest.raises(RecaptionError, match="model_type blip .*coca backend"):
        load_preset("coca-vit-l-14", model=blip)
    with pytest.raises(RecaptionError, match="open_clip model .*blip2 backend"):
        load_preset(f"local-dir:{coca}", backend="blip2")
    for ok, backend in ((qwen, "vlm"), (blip, "blip"), (f"local-dir:{coca}", "coca")):
        assert load_preset(ok).backend == backend  # each folder's own backend still loads it
    assert load_preset("qwen2.5-vl-3b", model=qwen).backend == "vllm"  # vLLM serves every family it knows
    assert cli("caption", shard_dir, "-o", tmp_path / "ann", "-c", "sieve", "--model", qwen) == 2
    assert "blip backend of sieve" in capsys.readouterr().err
    assert not (tmp_path / "ann").exists()


@pytest.mark.parametrize("strategy,extra", [
    ("greedy", {}),
    ("sample", {"num_captions": 3, "top_p": 0.9, "top_k": 30}),
    ("beam", {"num_captions": 2, "num_beams": 3}),
])
def test_coca_kv_cache_gives_the_uncached_result(tiny_models, strategy, extra, one_thread):
    from recaption.captioners.coca_cache import CachedCocaDecoder, supported

    cap = build_captioner(load_preset(tiny_models["coca"], strategy=strategy, max_new_tokens=7,
                                      repetition_penalty=1.2, dtype="float32", **extra))
    assert supported(cap.model)
    x = torch.stack([cap.preprocess(im) for im in IMAGES])
    with torch.no_grad():
        _, embs = cap.model._encode_image(x)
        kw = dict(prefix=[cap.sot], eot=cap.eot, dec=cap.cfg.decoding, max_context=cap.max_context)
        torch.manual_seed(3)
        fast = decode(cap.model, embs, use_cache=True, **kw)
        torch.manual_seed(3)
        slow = decode(cap.model, embs, use_cache=False, **kw)
        assert fast == slow
        # and step by step, the cached logits are the recomputed ones
        seq = torch.tensor([[cap.sot] + fast[0][0]])
        d = CachedCocaDecoder(cap.model, embs[:1])
        for i in range(1, seq.shape[1]):
            got = d.step(seq[:, i - 1])
            # one query row against the whole sequence: other float32 kernels, another rounding (the
            # tokens above are compared exactly)
            assert torch.allclose(got, step_logits(cap.model, embs[:1], seq[:, :i]), atol=5e-4)


def test_blip2_t5_with_and_without_prompt(tiny_models):
    """T5 configs have no bos_token_id; without a prompt the encoder gets the query embeddings alone."""
    for prompt in (None, "Question: what is in the picture? Answer:"):
        cap = build_captioner(load_preset(tiny_models["blip2t5"], backend="blip2", max_new_tokens=4, prompt=prompt))
        assert not cap.model.config.use_decoder_only_language_model
        out = cap.caption(IMAGES, [None] * 3, "t5")
        assert len(out) == 3 and all(len(c) == 1 for c in out)


def test_the_tiny_coca_is_the_same_every_build(tmp_path):
    """The tiny CoCa's weights are the seed's alone: open_clip left its decoder's text projection
    as uninitialised memory, so each build differed (logits up to 1e28) and the CoCa comparisons
    above failed or passed by what memory held (make test-fast failed them by run)."""
    import glob

    from safetensors.torch import load_file

    from recaption.demo.tiny_models import build_coca

    built = []
    for i in range(2):
        build_coca(tmp_path / str(i))
        built.append(load_file(glob.glob(str(tmp_path / str(i) / "*.safetensors"))[0]))
    assert built[0].keys() == built[1].keys()
    assert [k for k in built[0] if not torch.equal(built[0][k], built[1][k])] == []
    assert all(bool(torch.isfinite(v).all()) and float(v.abs().max()) < 100 for v in built[0].values()
               if v.is_floating_point())
