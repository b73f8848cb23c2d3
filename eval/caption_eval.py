#!/usr/bin/env python
"""Evaluate a captioner on a labelled set (images + COCO-caption JSON references).

    .venv/bin/python eval/caption_eval.py --data eval/data/coco-mini --captioner blip-base --clip-model ViT-B-32
    .venv/bin/python eval/caption_eval.py --data my-coco --captioner /ckpt/blip --clip-model local-dir:/ckpt/clip

Prints BLEU-4, CIDEr-D, CLIP-S, RefCLIP-S, mean length and unique trigrams; --json writes them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import metrics  # noqa: E402


def load_coco(data: Path) -> tuple[list[Path], list[list[str]]]:
    spec = json.loads((data / "captions.json").read_text())
    refs: dict = {}
    for a in spec["annotations"]:
        refs.setdefault(a["image_id"], []).append(a["caption"])
    imgs = [(data / "images" / im["file_name"], refs.get(im["id"], [])) for im in spec["images"]]
    imgs = [(p, r) for p, r in imgs if r]
    return [p for p, _ in imgs], [r for _, r in imgs]


def evaluate(data: Path, captioner: str, clip_model: str, clip_pretrained: str | None = "openai",
             options: dict | None = None, batch_size: int = 16, device: str | None = None) -> dict:
    import torch
    from PIL import Image

    from recaption.captioners import build_captioner, load_preset
    from recaption.scoring.clip import ClipConfig, ClipScorer

    paths, refs = load_coco(data)
    cap = build_captioner(load_preset(captioner, **({"device": device} | (options or {}))))
    clip = ClipScorer(ClipConfig(clip_model, clip_pretrained, device=device))
    hyps, cs, rcs = [], [], []
    for i in range(0, len(paths), batch_size):
        ims = [Image.open(p).convert("RGB") for p in paths[i:i + batch_size]]
        out = [c[0] for c in cap.caption(ims, [None] * len(ims), f"eval/{i}")]
        c, r = clip_scores(clip, clip.encode_images(ims), out, refs[i:i + batch_size])
        cs += c
        rcs += r
        hyps += out
    del torch
    return {
        "captioner": captioner, "images": len(paths),
        "bleu4": metrics.bleu4(hyps, refs), "cider_d": metrics.cider_d(hyps, refs),
        "clip_s": sum(cs) / len(cs), "ref_clip_s": sum(rcs) / len(rcs),
        "mean_length": metrics.mean_length(hyps), "unique_trigrams": metrics.unique_trigrams(hyps),
        "examples": [{"file": p.name, "caption": h, "refs": r} for p, h, r in list(zip(paths, hyps, refs))[:5]],
    }


def clip_scores(clip, image_emb, hyps: list[str], refs: list[list[str]]) -> tuple[list[float], list[float]]:
    """CLIP-S and RefCLIP-S per caption; texts carry the reference prompt prefix."""
    cs, rcs = [], []
    for j, h in enumerate(hyps):
        t = clip.encode_texts([metrics.CLIPSCORE_PREFIX + x for x in [h] + refs[j]])
        cos_img = float(image_emb[j] @ t[0])
        cs.append(metrics.clip_s(cos_img))
        rcs.append(metrics.ref_clip_s(cos_img, (t[1:] @ t[0]).tolist()))
    return cs, rcs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).parent / "data" / "coco-mini"))
    ap.add_argument("--captioner", required=True, help="preset, HF id or local path")
    ap.add_argument("--model", help="checkpoint replacing the preset's")
    ap.add_argument("--clip-model", default="ViT-B-32")
    ap.add_argument("--clip-pretrained", default="openai")
    ap.add_argument("--device")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    res = evaluate(Path(a.data), a.captioner, a.clip_model, a.clip_pretrained,
                   {"model": a.model} if a.model else {}, device=a.device)
    for k in ("images", "bleu4", "cider_d", "clip_s", "ref_clip_s", "mean_length", "unique_trigrams"):
        v = res[k]
        print(f"{k:<16}{v:.4f}" if isinstance(v, float) else f"{k:<16}{v}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
