import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from recaption.scoring.clip import ClipScorer


def test_clip_score_equals_direct_open_clip(tiny_models):
    s = ClipScorer(model=tiny_models["clip"], device="cpu", dtype="float32")  # exact maths
    images = [Image.new("RGB", (90, 70), c) for c in ("red", "navy")]
    raws, cands = ["a red square", None], [["a", "bb"], ["blue thing"]]
    emb = s.encode_images(images)
    raw_s, cand_s = s.score(emb, raws, cands)

    model, _, pre = open_clip.create_model_and_transforms(tiny_models["clip"])
    tok = open_clip.get_tokenizer(tiny_models["clip"])
    model.eval()
    with torch.no_grad():
        im = F.normalize(model.encode_image(torch.stack([pre(i) for i in images])), dim=-1)
        t = F.normalize(model.encode_text(tok(["a red square", "a", "bb", "blue thing"])), dim=-1)
    assert raw_s[0] == pytest.approx(float(im[0] @ t[0]), abs=1e-5)
    assert raw_s[1] is None
    assert cand_s[0] == pytest.approx([float(im[0] @ t[1]), float(im[0] @ t[2])], abs=1e-5)
    assert cand_s[1] == pytest.approx([float(im[1] @ t[3])], abs=1e-5)
    assert all(-1.0 <= x <= 1.0 for x in cand_s[0])  # a cosine: no logit scale, no clamp


def test_auto_dtype_follows_the_hardware(tiny_models):
    from recaption.models import cpu_has_native_bf16

    s = ClipScorer(model=tiny_models["clip"], device="cpu")
    assert s.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    emb = s.encode_images([Image.new("RGB", (64, 64), "red")])
    raw, _ = s.score(emb, ["a red square"], [[]])
    assert -1.0 <= raw[0] <= 1.0 and emb.dtype == torch.float32  # scores are computed in fp32
