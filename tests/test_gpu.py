"""The GPU path: runs where CUDA exists (bf16/fp16 autodetected), skips elsewhere."""
import pytest
import torch

from recaption.io import annotations as ann
from tests.helpers import cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_annotate_on_cuda(shard_dir, tiny_models, minilm, tmp_path):  # pragma: no cover - GPU only
    assert cli("annotate", shard_dir, "-o", tmp_path / "a", "-c", "sieve", "--model", tiny_models["blip"],
               "--num-captions", 2, "--clip-model", tiny_models["clip"], "--sieve-model", minilm,
               "--device", "cuda", "-q") == 0
    rows = [r for f in sorted((tmp_path / "a").glob("*.parquet")) for r in ann.read_rows(str(f))]
    assert all(r["status"] == "ok" and len(r["captions"]) == 2 for r in rows)


def test_coca_decoder_on_cuda(tiny_models):  # pragma: no cover - GPU only
    from PIL import Image

    from recaption.captioners import build_captioner, load_preset

    cap = build_captioner(load_preset(tiny_models["coca"], device="cuda", max_new_tokens=5))
    assert cap.dtype in (torch.bfloat16, torch.float16)
    assert len(cap.caption([Image.new("RGB", (64, 64))], [None], "k")[0]) == 1


def test_vlm_on_cuda_in_bf16_batched(tiny_models):  # pragma: no cover - GPU only
    """The transformers VLM backend on one GPU: bf16 where the device has it, a batch as each image alone."""
    from PIL import Image

    from recaption.captioners import build_captioner, load_preset

    cap = build_captioner(load_preset(tiny_models["vlm"], device="cuda", max_new_tokens=5, template="alt-text"))
    assert cap.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    ims = [Image.new("RGB", (64, 48), "red"), Image.new("RGB", (90, 40), "blue")]
    out = cap.caption(ims, ["a red square", None], "k", prepared=cap.prepare(ims))
    assert [len(c) for c in out] == [1, 1] and cap.tokens_generated > 0
