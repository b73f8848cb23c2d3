#!/usr/bin/env python
"""Throughput benchmark: per stage and end to end, recaption's pipeline vs a naive baseline.

Real-size architectures with random weights (built and saved locally, loaded through the normal
code): BLIP-base captioner, open_clip ViT-B-32, and the real all-MiniLM-L6-v2. The naive baseline
does the same work one sample at a time with the same models and decoding settings (as
Data-Juicer's per-sample mappers do). Prints a table and writes JSON.

    python scripts/bench.py                      # CPU defaults (small, a few minutes)
    python scripts/bench.py --samples 2048 --device cuda --batch-size 256   # on a GPU
    python scripts/bench.py --mode input         # the input path alone, per CPU core (bench_input.py)
    python scripts/bench.py --vlm qwen2_vl       # also a VLM through transformers, beside BLIP
    python scripts/bench.py --mode vlm           # the VLM beside BLIP alone (no CLIP, SIEVE, naive)
    python scripts/bench.py --mode fusion        # the share of the bundled shards a `where` rule fuses
    python scripts/bench.py --mode length        # the length group's cost on the bundled shards
    python scripts/bench.py --mode tags          # each LAION tag head's share of a CLIP pass

The VLM is a small real-shape Qwen2-VL (a SmolLM2-135M-sized language model: 576 wide, 30
layers, 49,152-token vocabulary; a 12-layer 768-wide vision tower; images up to 448x448, so 256
image tokens) or LLaVA-1.5 (CLIP ViT-B/16 at 336 px, the same language model), random weights,
built and saved locally and loaded through the vlm backend as a user's folder is.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_models(root: Path, clip_name: str, blip_size: str) -> dict:
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    from recaption.demo.tiny_models import _bert_vocab, _open_clip_dir

    done = root / "ok.json"
    if done.exists():
        return json.loads(done.read_text())
    import open_clip
    import torch

    torch.manual_seed(0)
    blip = root / f"blip-{blip_size}"
    vocab = _bert_vocab(blip / "_tok")
    words = vocab.read_text().splitlines()
    words += [f"[unused{i}]" for i in range(30524 - len(words))]  # BERT-size vocab: real LM-head cost
    vocab.write_text("\n".join(words) + "\n")
    tok = BertTokenizer(str(vocab), do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    cfg = BlipConfig()  # BLIP-base sizes
    if blip_size == "large":
        cfg.vision_config.hidden_size, cfg.vision_config.num_hidden_layers = 1024, 24
        cfg.vision_config.intermediate_size, cfg.vision_config.num_attention_heads = 4096, 16
        cfg.text_config.encoder_hidden_size = 1024
    cfg.text_config.vocab_size = len(tok)
    cfg.text_config.bos_token_id = tok.convert_tokens_to_ids("[DEC]")
    cfg.text_config.pad_token_id, cfg.text_config.sep_token_id = tok.pad_token_id, tok.sep_token_id
    cfg.text_config.eos_token_id = tok.sep_token_id
    BlipForConditionalGeneration(cfg).save_pretrained(blip)
    BlipProcessor(BlipImageProcessor(size={"height": 384, "width": 384}), tok).save_pretrained(blip)
    clip_cfg = open_clip.get_model_config(clip_name)
    clip = _open_clip_dir(root / clip_name, clip_cfg, 0)
    paths = {"blip": str(blip), "clip": clip}
    done.write_text(json.dumps(paths))
    return paths


def build_vlm(root: Path, family: str) -> str:
    """A small real-shape VLM of a family (random weights), saved once under root."""
    import torch
    from transformers import (
        CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
        LlavaProcessor, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from recaption.demo.tiny_models import LLAVA_CHAT, QWEN2_VL_CHAT, QWEN_SPECIALS, _vlm_tokenizer

    out = root / f"vlm-{family}"
    if (out / "config.json").is_file():
        return str(out)
    torch.manual_seed(0)
    # the language model's shape: SmolLM2-135M's (ids past the small tokenizer's vocabulary decode to nothing,
    # but cost the LM head what a real vocabulary does)
    lm = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
              num_key_value_heads=3, max_position_embeddings=4096)
    if family == "qwen2_vl":
        tok = _vlm_tokenizer(QWEN_SPECIALS)
        ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
        cfg = Qwen2VLConfig(
            text_config=lm | dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                   "mrope_section": [8, 12, 12]},
                                  bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                                  pad_token_id=tok.pad_token_id),
            vision_config=dict(depth=12, embed_dim=768, hidden_size=576, num_heads=12, patch_size=14,
                               spatial_merge_size=2, temporal_patch_size=2),
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
        Qwen2VLForConditionalGeneration(cfg).save_pretrained(out)
        ip = Qwen2VLImageProcessor(size={"shortest_edge": 56 * 56, "longest_edge": 448 * 448}, patch_size=14,
                                   merge_size=2, temporal_patch_size=2)
        Qwen2VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                         chat_template=QWEN2_VL_CHAT).save_pretrained(out)
    elif family == "llava":
        tok = _vlm_tokenizer(("<image>",))
        cfg = LlavaConfig(
            vision_config=CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                           num_attention_heads=12, image_size=336, patch_size=16).to_dict(),
            text_config=LlamaConfig(**lm, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                    pad_token_id=tok.pad_token_id).to_dict(),
            image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
            vision_feature_select_strategy="default")
        LlavaForConditionalGeneration(cfg).save_pretrained(out)
        LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 336},
                                                          crop_size={"height": 336, "width": 336}),
                       tokenizer=tok, patch_size=16, vision_feature_select_strategy="default",
                       num_additional_image_tokens=1, chat_template=LLAVA_CHAT).save_pretrained(out)
    else:
        raise SystemExit(f"--vlm takes qwen2_vl or llava, not {family!r}")
    return str(out)


def count_blip_tokens(cap) -> None:
    """BLIP's new tokens, counted as the vlm backend counts its own: its generate wrapped (ids after
    its [DEC] start token, up to and including [SEP])."""
    from recaption.captioners.vlm import count_new_tokens

    generate, cap.tokens_generated = cap.model.generate, 0
    eos, pad = cap.model.generation_config.eos_token_id, cap.processor.tokenizer.pad_token_id

    def counted(*a, **kw):
        out = generate(*a, **kw)
        cap.tokens_generated += count_new_tokens(out[:, 1:], eos, pad)
        return out

    cap.model.generate = counted


def caption_rates(urls, cap, batch: int) -> dict:
    """A captioner over the same decoded images: images/s, new tokens/s and tokens per caption."""
    from recaption.io.images import decode
    from recaption.io.shards import iter_shards

    recs = [r for r in iter_shards(urls) if hasattr(r, "members")]
    ims = [decode(r.image_bytes, draft_size=cap.image_size) for r in recs]
    raws = [r.raw_caption for r in recs]
    cap.caption(ims[:1], raws[:1], "warm-up")
    n0 = cap.tokens_generated
    t, caps = 0.0, []
    for i in range(0, len(ims), batch):
        c, dt = timed(cap.caption, ims[i:i + batch], raws[i:i + batch], str(i))
        caps += [x for cands in c for x in cands]
        t += dt
    tokens = cap.tokens_generated - n0
    return {"images_per_s": len(ims) / t, "output_tokens_per_s": tokens / t,
            "tokens_per_caption": tokens / max(1, len(caps)), "images": len(ims), "seconds": t}


def samples(n: int, shards_dir: Path, per_shard: int):
    from recaption.demo.samples import make_shards

    make_shards(shards_dir, n_shards=max(1, n // per_shard), per_shard=per_shard, seed=3, size=512)


def naive(urls, cap, clip, sieve, max_pixels=None):
    """One sample at a time: decode, caption, CLIP, SIEVE; same models and settings."""
    from recaption.io.images import decode
    from recaption.io.shards import iter_shards

    n = 0
    for rec in iter_shards(urls):
        if not hasattr(rec, "members"):
            continue
        im = decode(rec.image_bytes)
        cands = cap.caption([im], [rec.raw_caption], rec.key)
        emb = clip.encode_images([im])
        clip.score(emb, [rec.raw_caption], cands)
        sieve.score([rec.raw_caption], cands)
        n += 1
    return n


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def stage_rates(urls, cap, clip, sieve, batch):
    from recaption.io.images import decode
    from recaption.io.shards import iter_shards

    recs = [r for r in iter_shards(urls) if hasattr(r, "members")]
    _, t = timed(lambda: [decode(r.image_bytes, draft_size=cap.image_size) for r in recs])
    ims = [decode(r.image_bytes, draft_size=cap.image_size) for r in recs]
    out = {"decode": len(recs) / t}
    raws = [r.raw_caption for r in recs]
    t = 0.0
    cands = []
    for i in range(0, len(ims), batch):
        c, dt = timed(cap.caption, ims[i:i + batch], raws[i:i + batch], str(i))
        cands += c
        t += dt
    out["caption"] = len(ims) / t
    t = 0.0
    embs = []
    for i in range(0, len(ims), batch):
        e, dt = timed(clip.encode_images, ims[i:i + batch])
        embs.append(e)
        t += dt
    out["clip_image"] = len(ims) / t
    import torch

    emb = torch.cat(embs)
    _, t = timed(clip.score, emb, raws, cands)
    out["clip_text_pairs"] = (len(ims) + sum(len(c) for c in cands)) / t
    _, t = timed(sieve.score, raws, cands)
    out["sieve"] = len(ims) / t
    return out


LONG_SENTENCES = ("The image shows a {c}.", "It is set against a plain background with soft, even light.",
                  "The edges of the shape are sharp and clearly defined.", "There is no text or watermark visible.",
                  "The colours are saturated and the contrast is high.", "In the corner a small shadow falls "
                  "to the right.", "The composition is centred and symmetrical, typical of stock graphics.",
                  "Overall the picture looks like a simple illustration made for a website or a slide.")


def length_cost(a, root: Path) -> None:
    """The `length` group's cost: `score` with CLIP alone, then with the length group, then with
    --clean-floor too, on the bundled shards (48 samples) with a real-size random-weight CLIP,
    for short candidates (BLIP-like: token counts only) and long ones (VLM-like, past the context:
    sentence scores). Each timed `repeat` times (median), on fresh copies of one imported folder."""
    import shutil
    import statistics

    import pyarrow as pa
    import pyarrow.parquet as pq

    from recaption import api
    from recaption.engines import Execution
    from recaption.io.shards import iter_shards
    from recaption.scoring.clip import ClipConfig

    models = build_models(root, a.clip, a.blip)
    shards = Path(api.__file__).parent / "data" / "sample-shards"
    urls = sorted(str(p) for p in shards.glob("*.tar"))
    recs = [r for r in iter_shards(urls) if hasattr(r, "members")]
    work = Path(tempfile.mkdtemp(prefix="recaption-bench-length-"))
    ex = Execution(device=a.device or "cpu", quiet=True, workers=1)
    clip = ClipConfig(models["clip"], device=a.device, dtype=a.dtype)
    res = {"samples": len(recs), "clip": a.clip, "repeat": a.repeat, "sets": {}}
    for kind in ("short", "long"):
        keys, caps = [], []
        for r in recs:
            c = (r.raw_caption or "a shape").split("|")[0].strip()
            text = f"a picture of a {c}" if kind == "short" else " ".join(x.format(c=c) for x in LONG_SENTENCES)
            keys += [r.key, r.key]
            caps += [text, text.replace("a ", "one ", 1)]
        pq.write_table(pa.table({"key": keys, "caption": caps}), work / f"{kind}.parquet")
        base = work / f"{kind}-imported"
        api.import_captions(urls, str(base), str(work / f"{kind}.parquet"), execution=ex)
        runs = {"clip": {}, "clip + length": {"length": True},
                "clip + length + clean floor": {"length": {"clean_floor": 0.0}}}
        got = {}
        for name, extra in runs.items():
            walls, length_s, clip_s = [], [], []
            for i in range(a.repeat):
                out = work / f"{kind}-{len(got)}-{i}"
                shutil.copytree(base, out)
                summ, t = timed(api.annotate, urls, str(out), clip=clip, execution=ex, verb="score", **extra)
                walls.append(t - summ["stage_seconds"].get("load_models", 0.0))
                length_s.append(summ["stage_seconds"].get("length", 0.0))
                clip_s.append(summ["stage_seconds"].get("clip", 0.0))
            got[name] = {"wall_s_without_loading": statistics.median(walls), "clip_s": statistics.median(clip_s),
                         "length_s": statistics.median(length_s)}
        t = pq.read_table(next((work / f"{kind}-1-0").glob("00000.parquet")))
        n = [x for xs in t["clip_captions_tokens"].to_pylist() for x in xs]
        got["tokens_per_caption"] = statistics.mean(n)
        got["share_truncated"] = sum(x > t["clip_context"][0].as_py() for x in n) / len(n)
        got["length_ms_per_sample"] = 1000 * got["clip + length"]["length_s"] / len(recs)
        got["length_vs_clip"] = got["clip + length"]["length_s"] / max(got["clip"]["clip_s"], 1e-9)
        res["sets"][kind] = got
    Path(a.json).write_text(json.dumps(res, indent=2))
    print(f"length group on the bundled shards ({len(recs)} samples, 2 candidates each), {a.clip} random "
          f"weights, median of {a.repeat}:")
    for kind, g in res["sets"].items():
        print(f"  {kind} candidates: {g['tokens_per_caption']:.0f} tokens/caption, "
              f"{100 * g['share_truncated']:.0f}% truncated; clip stage {g['clip']['clip_s']:.2f} s, "
              f"length stage {g['clip + length']['length_s']:.2f} s ({g['length_ms_per_sample']:.1f} ms/sample, "
              f"{100 * g['length_vs_clip']:.0f}% of clip's); pass without loading "
              f"{g['clip']['wall_s_without_loading']:.2f} -> {g['clip + length']['wall_s_without_loading']:.2f} s "
              f"(clean floor: {g['clip + length + clean floor']['wall_s_without_loading']:.2f} s)")
    print(f"JSON: {a.json}")


TAG_RUNS = {  # option values beside the CLIP pass's, per run; the heads' declarations filled in at run time
    "clip": {},
    "clip + punsafe": {"punsafe_head": "punsafe"},
    "clip + aesthetic": {"aesthetic_head": "aesthetic"},
    "clip + pwatermark": {"pwatermark_weights": "pwatermark"},
    "clip + open_nsfw": {"open_nsfw": True},
    "clip + all four": {"punsafe_head": "punsafe", "aesthetic_head": "aesthetic", "pwatermark_weights": "pwatermark",
                        "open_nsfw": True},
}


def tag_shares(res: dict) -> None:
    """Each run's tag stage seconds (the stages of the tags its options turn on), their share of the
    pass's wall time without loading, and the wall time's growth over CLIP alone."""
    clip_wall = res["runs"]["clip"]["wall_s_without_loading"]
    for name, r in res["runs"].items():
        given = TAG_RUNS[name]
        tags = [t for t in ("punsafe", "aesthetic", "pwatermark", "open_nsfw")
                if any(k == t or k.startswith(t + "_") for k in given)]
        r["tags"] = tags
        r["tag_stage_s"] = sum(r["stage_s"].get(t, 0.0) for t in tags)
        r["share_of_pass"] = r["tag_stage_s"] / r["wall_s_without_loading"]
        r["wall_growth"] = r["wall_s_without_loading"] / clip_wall - 1


def tags_cost(a, root: Path) -> None:
    """Each LAION tag's cost in a `score` pass that runs CLIP: the CLIP heads (punsafe, aesthetic)
    on the pass's own embedding, the pixel nets (pwatermark's EfficientNet-B3, Open-NSFW's ResNet-50
    through onnxruntime, its real weights) on the shared decode. The bundled shards (48 samples),
    a real-size random-weight CLIP (--clip), the heads' published architectures with random
    weights; each run `repeat` times (median) on a fresh folder. The share is the head's stage
    seconds over the pass's wall time without model loading, and the wall time's growth."""
    import statistics

    import torch
    import yaml

    from recaption import annotators, api
    from recaption.scoring import heads
    from recaption.scoring.heads import arch

    models = build_models(root, a.clip, a.blip)
    work = Path(tempfile.mkdtemp(prefix="recaption-bench-tags-"))
    short = a.clip.replace("/", "-").lower()
    given = {}
    for tag, name in (("punsafe", f"laion-nsfw-{short}"), ("aesthetic", f"laion-aesthetic-v1-{short}")):
        h = heads.get(name)  # a head over this CLIP's width (B/32 or L/14): its published architecture
        torch.manual_seed(1)
        torch.save(arch.build(h).state_dict(), work / h.weights)
        d = yaml.safe_load((heads.HERE / "heads.yaml").read_text())[name]
        d["clip"] = {"model": models["clip"], "pretrained": None}
        (work / f"{tag}.yaml").write_text(yaml.safe_dump({"name": f"random-{name}", **d}))
        given[tag] = str(work / f"{tag}.yaml")
    torch.manual_seed(2)
    torch.save(arch.build(heads.get("laion-watermark-v1")).state_dict(), work / "wm.pt")
    given["pwatermark"] = str(work / "wm.pt")
    shards = Path(api.__file__).parent / "data" / "sample-shards"
    base = {"captioner": "none", "clip_model": models["clip"], "sieve": False, "device": a.device}
    decode = None
    if a.tag_input == "generated":  # a GPU needs more than 48 samples: --samples JPEGs, 512 px, in batches
        shards = work / "shards"
        samples(a.samples, shards, a.per_shard)
        decode = {"batch_size": a.batch_size}
    urls = sorted(str(p) for p in shards.glob("*.tar"))
    res = {"samples": None, "clip": a.clip, "repeat": a.repeat, "runs": {}}
    for name, extra in TAG_RUNS.items():
        values = {**base, **{k: given.get(v, v) if isinstance(v, str) else v for k, v in extra.items()}}
        walls, stages = [], {}
        for i in range(a.repeat):
            out = work / f"{len(res['runs'])}-{i}"
            summ, t = timed(api.annotate, urls, str(out), annotators.configure(values), decode=decode,
                            execution={"device": a.device, "quiet": True, "workers": 1}, verb="score")
            res["samples"] = summ["samples"]
            walls.append(t - summ["stage_seconds"].get("load_models", 0.0))
            for k, v in summ["stage_seconds"].items():
                stages.setdefault(k, []).append(v)
        res["runs"][name] = {"wall_s_without_loading": statistics.median(walls),
                             "stage_s": {k: statistics.median(v) for k, v in stages.items()}}
    tag_shares(res)
    Path(a.json).write_text(json.dumps(res, indent=2))
    print(f"tag heads in a score pass with {a.clip} (random weights), {res['samples']} samples, median of {a.repeat}:")
    for name, r in res["runs"].items():
        print(f"  {name:<20} pass {r['wall_s_without_loading']:6.2f} s without loading "
              f"({100 * r['wall_growth']:+.1f}%), tag stages {r['tag_stage_s']:.3f} s = "
              f"{100 * r['share_of_pass']:.1f}% of the pass")
    print(f"JSON: {a.json}")


def peak_memory(shards_dir: Path, n_shards: int, models: dict, device: str, batch: int) -> float:
    """Peak RSS (MiB) of a fresh process annotating the first n shards."""
    code = f"""
import resource, sys
from recaption import api
from recaption.captioners.base import load_preset
from recaption.engines import Execution
from recaption.scoring.clip import ClipConfig
from recaption.scoring.sieve import SieveConfig
from recaption.stages.inputs import DecodeOptions
urls = sorted(str(p) for p in __import__('pathlib').Path({str(shards_dir)!r}).glob('*.tar'))[:{n_shards}]
api.annotate(urls, sys.argv[1], captions=load_preset({models['blip']!r}, max_new_tokens=20),
             clip=ClipConfig({models['clip']!r}, device={device!r}), sieve=SieveConfig(api.default_sieve_model()),
             decode=DecodeOptions(batch_size={batch}), execution=Execution(device={device!r}, quiet=True, workers=1))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    with tempfile.TemporaryDirectory() as d:
        p = subprocess.run([sys.executable, "-c", code, d], capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(p.stderr[-2000:])
    return float(p.stdout.strip().splitlines()[-1])


def fusion_share(a, root: Path, work: Path) -> dict:
    """One annotate pass over the bundled sample shards: a short group (BLIP), and a fused group (a
    causal LM on CapsFusion's prompt) sent only the rows `--where` selects; the share of the pool
    fused, by clause, from the run's summary, and the text model's seconds per row sent."""
    from recaption import annotators, api
    from recaption.demo.tiny_models import build_blip, build_causal_lm, build_clip
    from recaption.resources import PACKAGE

    m = {"blip": build_blip(root / "tiny-blip"), "clip": build_clip(root / "tiny-clip"),
         "lm": build_causal_lm(root / "tiny-llama", chat=False)}
    shards = sorted(str(p) for p in (PACKAGE / "data" / "sample-shards").glob("*.tar"))
    groups = [f"short={m['blip']},max_new_tokens=20",
              f"fused={m['lm']},backend=text,template=capsfusion,max_new_tokens={a.fusion_tokens},where={a.where}"]
    t0 = time.perf_counter()
    cfgs = annotators.configure({"captioner": "none", "group": groups, "clip_model": m["clip"]})
    summ = api.annotate(shards, str(work / "fusion-ann"), cfgs, execution={"device": a.device, "quiet": True,
                                                                          "workers": 1})
    f = summ.get("fusion", {}).get("fused", {"sent": 0, "by": {}})
    seconds = summ["stage_seconds"].get("caption.fused", 0.0)
    return {"rule": a.where, "shards": len(shards), "samples": summ["samples"], "fused": f["sent"],
            "share_fused": f["sent"] / summ["samples"] if summ["samples"] else None, "by": f["by"],
            "text_model_seconds_per_fused_row": seconds / f["sent"] if f["sent"] else None,
            "wall_seconds": time.perf_counter() - t0,
            "models": "tiny random-weight BLIP, CLIP and LLaMA; the real all-MiniLM-L6-v2 for SIEVE"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--where", default="sieve__short<0.25 & clip_raw>=0.0",
                    help="fusion mode: the fused group's rule (README: chained and fused groups)")
    ap.add_argument("--fusion-tokens", type=int, default=20, help="fusion mode: new tokens per fused caption")
    ap.add_argument("--mode", choices=["pipeline", "input", "vlm", "fusion", "length", "tags"], default="pipeline",
                    help="pipeline: models and end to end; input: decode + preprocessing alone, per core; "
                         "vlm: the VLM beside BLIP alone")
    ap.add_argument("--vlm", default=None, help="also time a VLM through transformers: qwen2_vl or llava")
    ap.add_argument("--vlm-backend", default="vlm", choices=["vlm", "vllm"],
                    help="vlm: transformers; vllm: the same folder through vLLM (needs recaption[vllm], a GPU)")
    ap.add_argument("--vlm-tokens", type=int, default=60, help="new tokens per VLM caption (greedy)")
    ap.add_argument("--vlm-batch-size", type=int, default=None, help="VLM batch (default: --batch-size)")
    ap.add_argument("--vlm-samples", type=int, default=None, help="images the VLM and BLIP caption")
    ap.add_argument("--repeat", type=int, default=3, help="length and tags modes: runs of each setting (median)")
    ap.add_argument("--tag-input", choices=["bundled", "generated"], default="bundled",
                    help="tags mode: the 48 bundled samples, or --samples generated 512 px JPEGs (GPU)")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--per-shard", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="auto",
                    help="auto (bf16 on CUDA and on CPUs with AMX/AVX512-BF16), float32, ...")
    ap.add_argument("--clip", default="ViT-B-32")
    ap.add_argument("--blip", default="base", choices=["base", "large"])
    ap.add_argument("--naive-samples", type=int, default=16, help="samples for the (slow) baseline")
    ap.add_argument("--memory", action="store_true", help="also measure peak memory for 1, 4, 8 shards")
    ap.add_argument("--json", default="bench-results.json")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/recaption/bench-models"))
    ap.add_argument("--images", type=int, default=400, help="input mode: JPEGs per size")
    ap.add_argument("--cores", default="1,2", help="input mode: CPU core counts to measure")
    a = ap.parse_args()
    if a.mode == "input":
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_input import run

        return run(a)
    if a.mode == "length":
        return length_cost(a, Path(a.cache))
    if a.mode == "tags":
        return tags_cost(a, Path(a.cache))

    import torch

    from recaption import api
    from recaption.captioners import build_captioner, load_preset
    from recaption.models import resolve_device
    from recaption.engines import Execution
    from recaption.scoring.clip import ClipConfig, ClipScorer
    from recaption.scoring.sieve import SieveConfig, SieveScorer
    from recaption.stages.inputs import DecodeOptions

    device = resolve_device(a.device)
    root = Path(a.cache)
    root.mkdir(parents=True, exist_ok=True)
    if a.mode == "fusion":
        r = fusion_share(a, root, Path(tempfile.mkdtemp(prefix="recaption-bench-")))
        Path(a.json).write_text(json.dumps({"fusion": r, "config": vars(a)}, indent=2))
        print(f"fusion on the bundled shards ({r['samples']} samples), rule {r['rule']!r}: "
              f"{r['fused']} fused, {100 * (r['share_fused'] or 0):.1f}% of the pool")
        for why, n in r["by"].items():
            print(f"  {why:<48}{n:>6}")
        if r["text_model_seconds_per_fused_row"]:
            print(f"text model: {r['text_model_seconds_per_fused_row']:.3f} s per fused row ({r['models']})")
        print(f"JSON: {a.json}")
        return
    models = build_models(root, a.clip, a.blip)
    work = Path(tempfile.mkdtemp(prefix="recaption-bench-"))
    samples(max(a.samples, 8 * a.per_shard if a.memory else a.samples), work / "shards", a.per_shard)
    urls = sorted(str(p) for p in (work / "shards").glob("*.tar"))
    n_main = max(1, a.samples // a.per_shard)

    opts = {"max_new_tokens": 20, "device": device, "dtype": a.dtype}  # greedy, 20 tokens
    cap = build_captioner(load_preset(models["blip"], **opts))
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "device": device,
               "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None, "torch": torch.__version__}
    vlm = None
    if a.vlm or a.mode == "vlm":
        family = a.vlm or "qwen2_vl"
        vurls = urls[: max(1, (a.vlm_samples or a.samples) // a.per_shard)]
        vcap = build_captioner(load_preset(build_vlm(root, family), backend=a.vlm_backend,
                                           max_new_tokens=a.vlm_tokens, device=device, dtype=a.dtype))
        vb = a.vlm_batch_size or a.batch_size
        count_blip_tokens(cap)
        vlm = {"family": family, "backend": a.vlm_backend, "batch_size": vb, "max_new_tokens": a.vlm_tokens,
               "dtype": str(getattr(vcap, "dtype", a.dtype)).replace("torch.", ""),
               "params_millions": sum(p.numel() for p in vcap.model.parameters()) / 1e6
               if hasattr(vcap, "model") else None,
               "vlm": caption_rates(vurls, vcap, vb),
               # BLIP on the same images and batch, its own 20 tokens
               "blip": caption_rates(vurls, cap, vb)}
        del vcap
        print(f"VLM {family} via {a.vlm_backend} ({vlm['params_millions'] or 0:.0f}M params, random weights, "
              f"{vlm['dtype']}, batch {vb}, "
              f"greedy {a.vlm_tokens} tokens) beside BLIP-{a.blip} (20 tokens) on {vlm['vlm']['images']} images:")
        for k in ("vlm", "blip"):
            r = vlm[k]
            print(f"  {k:<5} {r['images_per_s']:8.2f} images/s {r['output_tokens_per_s']:9.1f} output tokens/s "
                  f"{r['tokens_per_caption']:6.1f} tokens/caption")
        if a.mode == "vlm":
            Path(a.json).write_text(json.dumps({"machine": machine, "config": vars(a), "vlm": vlm}, indent=2))
            print(f"JSON: {a.json}")
            return
    clip = ClipScorer(ClipConfig(models["clip"], device=device, dtype=a.dtype))
    sieve = SieveScorer(api.default_sieve_model(), device=device)

    res = {"machine": machine,
           "config": vars(a) | {"captioner": f"BLIP-{a.blip} (random weights)", "clip": a.clip,
                                "decoding": "greedy, 20 new tokens", "dtype": str(cap.dtype).replace("torch.", "")}}
    if vlm:
        res["vlm"] = vlm
    res["stages_samples_per_s"] = stage_rates(urls[:n_main], cap, clip, sieve, a.batch_size)

    naive_urls = urls[: max(1, a.naive_samples // a.per_shard)]
    n, t = timed(naive, naive_urls, cap, clip, sieve)
    res["naive_samples_per_s"] = n / t

    out = work / "ann"
    summ, t = timed(api.annotate, urls[:n_main], str(out), captions=load_preset(models["blip"], **opts),
                    clip=ClipConfig(models["clip"], device=device, dtype=a.dtype),
                    sieve=SieveConfig(api.default_sieve_model()), decode=DecodeOptions(batch_size=a.batch_size),
                    execution=Execution(device=device, quiet=True, workers=1))
    res["pipeline_samples_per_s"] = summ["samples"] / t
    res["pipeline_stage_seconds"] = summ["stage_seconds"]
    # the models' wait for input, as a share of the wall time: under 5% means the GPU is fed
    res["pipeline_wait_input_share"] = summ["stage_seconds"].get("wait_input", 0.0) / t
    res["speedup_vs_naive"] = res["pipeline_samples_per_s"] / res["naive_samples_per_s"]
    if a.memory:
        res["peak_rss_mib"] = {k: peak_memory(work / "shards", k, models, device, a.batch_size) for k in (1, 4, 8)}
        res["peak_rss_8_vs_1"] = res["peak_rss_mib"][8] / res["peak_rss_mib"][1]

    Path(a.json).write_text(json.dumps(res, indent=2))
    print(f"\nrecaption bench on {res['machine']['device']} ({res['machine']['cpus']} CPUs"
          f"{', ' + res['machine']['gpu'] if res['machine']['gpu'] else ''}): BLIP-{a.blip} + {a.clip}, "
          "greedy 20 tokens, "
          f"{res['config']['dtype']}, batch {a.batch_size}")
    print(f"{'stage':<24}{'samples/s':>12}")
    for k, v in res["stages_samples_per_s"].items():
        print(f"{k:<24}{v:>12.2f}")
    print(f"{'naive end to end':<24}{res['naive_samples_per_s']:>12.2f}")
    print(f"{'recaption end to end':<24}{res['pipeline_samples_per_s']:>12.2f}")
    print(f"{'speed-up':<24}{res['speedup_vs_naive']:>11.2f}x")
    print(f"{'waiting for input':<24}{100 * res['pipeline_wait_input_share']:>11.1f}% of the wall time")
    if a.memory:
        m = res["peak_rss_mib"]
        print(f"peak RSS MiB: 1 shard {m[1]:.0f}, 4 shards {m[4]:.0f}, 8 shards {m[8]:.0f} "
              f"(8 vs 1: {100 * (res['peak_rss_8_vs_1'] - 1):+.1f}%)")
    print(f"JSON: {a.json}")


if __name__ == "__main__":
    main()
