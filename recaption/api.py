"""The Python API: what the CLI calls, usable from notebooks and other pipelines.

    import recaption as rc

    ann = rc.annotate("shards/", "ann/", captions={"captioner": "sieve"}, clip={"model": "ViT-L-14"},
                      sieve=True, decode={"batch_size": 32})
    dry = rc.mix("shards/", "ann/", strategy="threshold", fraction=0.3, filter_synthetic=True, dry_run=True)
    dry.strategies                                   # every strategy side by side, as a table
    mixed = rc.mix("shards/", "ann/", "out/", strategy="sieve", fraction=0.2)
    mixed.drops()                                    # every sample not written: an Arrow table
    rc.run("sieve", "shards/", "run/", sets=["mix.fraction=0.1"])

Settings come as the config objects (`rc.ClipConfig`, `rc.MixConfig`, ...) or as plain mappings,
checked against the same declarations the command line and recipes read (an annotator's
mapping is its recipe section; the config dataclasses' fields and types; the engines' options):
a misspelt name or a value of the wrong type is one line naming the nearest known ones.

Every function checks everything it can before it creates a folder, so a mistake leaves nothing
behind; each returns a result (`recaption.results`): the summary dict (also written as
`_summary.json` by the verbs that write shards), with counts, paths, tables and timings on top.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter

from recaption import annotators
from recaption.annotators.base import RunContext, model_identity
from recaption.engines import Execution, preflight
from recaption.errors import RecaptionError
from recaption.io import folders
from recaption.io.atomic import join, write_text
from recaption.io.fs import scoped
from recaption.io.images import DEFAULT_MAX_PIXELS
from recaption.io.pixels import PREPROCESS
from recaption.io.shards import DEFAULT_IMAGE_KEYS, ReadLimits
from recaption.io.sources import sample_count_hint, shards_of
from recaption.results import AnnotateResult, ImportResult, MixResult, Page, RunResult, Verification
from recaption.scoring.sieve import default_sieve_model, resolve_sieve_model  # noqa: F401  (the API's helpers)
from recaption.stages.inputs import DecodeOptions

log = logging.getLogger("recaption")
SUMMARY_VERSION = 1


# -- small shared pieces -----------------------------------------------------------------------


def _check_device(device: str | None) -> None:
    if device:
        from recaption.models import resolve_device

        resolve_device(device)  # fail here, before anything is created, if the GPU asked for is absent


def _summary_base(kind: str) -> dict:
    return {"format_version": SUMMARY_VERSION, "verb": kind}


# -- settings given as objects or mappings ------------------------------------------------------
def _type_name(obj) -> str:
    return type(obj).__name__


def _hints(cls) -> dict:
    import typing

    return typing.get_type_hints(cls)


def settings_of(cls, value, what: str, extra: dict | None = None, nested: dict | None = None):
    """A config dataclass from itself, None (its defaults) or a mapping of its fields, each name
    and value checked against the dataclass (one line: the nearest names, or the type wanted);
    `extra` adds names that are not fields (name -> type hint: they come back under `options`),
    `nested` builds a field from its own mapping (name -> (dataclass, what))."""
    import dataclasses as dc

    from recaption.errors import unknown
    from recaption.recipes import check_value

    if isinstance(value, cls):
        return value
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise RecaptionError(f"{what} takes a {cls.__name__} or a mapping of its settings, got a {_type_name(value)}")
    hints, extra, nested = _hints(cls), extra or {}, nested or {}
    fields = [f.name for f in dc.fields(cls)]
    kw, options = {}, {}
    allowed = [f for f in fields if not (extra and f == "options")] + list(extra)  # options: by their names
    for k, v in value.items():
        if k not in allowed:
            raise unknown(f"{what} setting", k, allowed)
        if k in nested:
            v = settings_of(nested[k][0], v, nested[k][1])
        elif k in extra:
            check_value(f"{what}.{k}", v, extra[k])
            options[k] = v
            continue
        elif not isinstance(v, (list, tuple, dict)):  # containers: the config's own check normalises them
            check_value(f"{what}.{k}", v, hints.get(k))
        kw[k] = v
    if options:
        kw["options"] = options
    try:
        return cls(**kw)
    except TypeError as e:
        raise RecaptionError(f"{what}: {e}") from None


def execution_of(value) -> Execution:
    """An `Execution` from itself, None, or a mapping of its fields and the engines' own options
    (`{"engine": "ray", "ray_address": "auto"}`: the options each engine declares)."""
    from recaption.engines import ENGINES, engine

    if isinstance(value, dict) and isinstance(value.get("options"), dict):  # the field itself, as Execution takes it
        value = {**{k: v for k, v in value.items() if k != "options"}, **value["options"]}
    declared = {o.name: (o.type | None) for name in ENGINES.names() for o in engine(name).OPTIONS}
    return settings_of(Execution, value, "execution", extra=declared)


def decode_of(value) -> DecodeOptions:
    """`DecodeOptions` from itself, None, or a mapping of its fields (`limits` a mapping of
    `ReadLimits`' fields)."""
    return settings_of(DecodeOptions, value, "decode", nested={"limits": (ReadLimits, "decode.limits")})


def limits_of(value) -> ReadLimits:
    """`ReadLimits` from itself, None or a mapping of its fields."""
    return settings_of(ReadLimits, value, "limits")


def mix_config(cfg=None, settings: dict | None = None, *, known: tuple[str, ...] = ()):
    """A `MixConfig` from itself or a mapping of its fields, with `settings` (its fields given as
    keywords) applied over it; `known` are the verb's own keywords, named when a setting is
    misspelt."""
    import dataclasses as dc

    from recaption.errors import unknown
    from recaption.mixing.strategies import MixConfig

    settings = dict(settings or {})
    fields = [f.name for f in dc.fields(MixConfig)]
    bad = next((k for k in settings if k not in fields), None)
    if bad is not None:
        raise unknown("mix setting or argument", bad, fields + list(known))
    if isinstance(cfg, MixConfig) and not settings:
        return cfg
    if isinstance(cfg, MixConfig):
        base = {f: getattr(cfg, f) for f in fields}
    elif cfg is None or isinstance(cfg, dict):
        base = dict(cfg or {})
    else:
        raise RecaptionError(f"mix takes a MixConfig or a mapping of its settings, got a {_type_name(cfg)}")
    return settings_of(MixConfig, {**base, **settings}, "mix")


_PROBES: dict = {}


def _probe(name: str, others: dict):
    """The config an annotator builds from its defaults (a copy), None where it builds none
    without settings (re-ranking's chain)."""
    import copy

    key = (name, annotators.REGISTRY.changes)
    if key not in _PROBES:
        try:
            _PROBES[key] = annotators.get(name).from_mapping(True, others)
        except Exception:  # it cannot be switched on without settings: its config is not probed
            _PROBES[key] = None
    return copy.deepcopy(_PROBES[key])


def _config_type(name: str, others: dict):
    """The class of the config an annotator builds, None where it is not known without settings."""
    probe = _probe(name, others)
    return None if probe is None else type(probe)


def _dict_config(cls, value: dict, defaults: dict) -> dict:
    """The config of an annotator whose config is a mapping of its option values (metrics, a
    plugin's): the given keys over its defaults, each known to it and of its Option's type."""
    from recaption.errors import unknown

    bad = next((k for k in value if k not in defaults), None)
    if bad is not None:
        raise unknown(f"{cls.name} setting", bad, list(defaults))
    _mapping_types(cls, value, None)
    return {**defaults, **value}


def _defaults(config_type):
    """A config dataclass with its defaults (to read the declared types from), None where it has none."""
    try:
        return config_type() if config_type is not None and dataclasses.is_dataclass(config_type) else None
    except TypeError:  # a field without a default
        return None


def _mapping_types(cls, value, cfg) -> None:
    """Each value of an annotator's mapping against the type its config field (or its Option)
    declares: one line naming `annotator.key`."""
    from recaption.recipes import check_value, field_hint

    if not isinstance(value, dict):
        return
    options = {o.name: o.type for o in cls.options}
    for k, v in value.items():
        if not isinstance(v, (list, tuple, dict)):
            hint = field_hint(cfg, k) if cfg is not None else None
            check_value(f"{cls.name}.{k}", v, hint or (options[k] | None if k in options else None))


def annotator_config(name: str, value, others: dict):
    """One annotator's config from what a caller gave for it: its config object, a mapping (its
    recipe section, checked key by key and value by value), True (its defaults), a preset name
    where it takes one (captions), or None/False (off)."""
    cls = annotators.get(name)  # a typo is refused even with None (off) as its value
    if value is None or value is False:
        return None
    if isinstance(value, dict) and _config_type(name, others) is dict:
        return _dict_config(cls, value, _probe(name, others))
    if value is True or isinstance(value, (dict, list, tuple)):
        try:
            cfg = cls.from_mapping(value, others)
        except (TypeError, ValueError, AttributeError) as e:  # a value of the wrong type broke the build
            _mapping_types(cls, value, _defaults(_config_type(name, others)))
            raise RecaptionError(f"{name}: {e}") from None
        _mapping_types(cls, value, cfg)
        return cfg
    if isinstance(value, str) and hasattr(cls, "coerce"):
        return cls.coerce(value)
    from recaption.annotators.groups import TextGroup, split

    if isinstance(value, TextGroup) and split(name)[0] == "captions" and split(name)[1]:
        return value  # a chained group's config (`annotators.configure(..., group=[...])` makes them)
    want = _config_type(name, others)
    if want is not None and not isinstance(value, want):
        fits = [n for n in annotators.names() if n != name and (t := _config_type(n, others)) is not None
                and isinstance(value, t)]
        hint = f"; did you mean {' or '.join(f + '=' for f in fits)}?" if fits else ""
        raise RecaptionError(f"{name} takes a {want.__name__}, a mapping of its settings or True, got a "
                             f"{_type_name(value)}{hint}")
    return value


# -- annotate: caption and/or score ------------------------------------------------------------
def annotator_configs(configs: dict) -> dict:
    """{annotator: config} checked and completed: unknown names refused, each given as its config,
    a mapping, True or a preset name (`annotator_config`), the annotators every pass runs (filter
    metrics) added, each checked before anything is created (model files, extras)."""
    for name in configs:
        annotators.get(name)  # every name known before any is built
    out = {}
    for name in annotators.run_order(configs):  # re-ranking is built after the clip config it reads
        cfg = annotator_config(name, configs[name], out)
        if cfg is not None:
            out[name] = cfg
    for cls in annotators.classes():
        if cls.name not in out and cls.always:
            out[cls.name] = cls.default()
    for name, cfg in out.items():
        annotators.get(name).check(cfg)
    return out


@scoped
def annotate(input_spec, ann_dir: str, configs: dict | None = None, *, decode: DecodeOptions | None = None,
             overwrite: bool = False, execution: Execution | None = None, verb: str = "annotate",
             storage_options: dict | str | None = None, groups: dict | None = None, **by_name) -> AnnotateResult:
    """Annotate every shard into `ann_dir/NAME.parquet`: each annotator's column group, given as
    `configs` ({name: config}) or by name, as its config object, a mapping of what its recipe
    section takes, True (its defaults) or a preset name (`captions="sieve"`,
    `clip={"model": "ViT-L-14"}`, `sieve=True`, `metrics={"lang_model": path}`;
    `recaption.annotators` lists them). `groups` adds named caption groups as a recipe's `groups`
    section does (`{"short": "blip-large", "long": {"captioner": ..., "caption": {...}}}`), each
    scored by the pass's CLIP and SIEVE. `decode` and `execution` take their objects or mappings.
    The filter metrics come with every pass. Returns an `AnnotateResult` (the summary dict).

    A file already holding a group with the same settings is not redone; a missing group is added."""
    from recaption.engines import run_stage
    from recaption.stages.annotate import AnnotateSpec, AnnotateStage
    from recaption.stages.bundle import AnnotatorSpec

    _known_names(by_name, "annotate", ("input_spec", "ann_dir", "configs", "decode", "overwrite", "execution",
                                       "verb", "storage_options", "groups"))
    ex = execution_of(execution).validate()
    cfgs = annotator_configs({**(configs or {}), **by_name})
    if groups:  # after the unnamed group's CLIP and SIEVE, which the groups' scores follow
        cfgs = annotator_configs({**cfgs, **annotators.named_groups(groups, cfgs)})
    cfgs = {n: annotators.get(n).for_folder(c, ann_dir) for n, c in cfgs.items()}
    if all(annotators.get(n).always for n in cfgs):
        log.info("no captioner or scorer: computing the filter metrics only")
    d = decode_options(decode_of(decode), cfgs)
    _check_device(ex.device)
    shards = shards_of(input_spec)
    folders.refuse_overlap(ann_dir, shards, "annotation folder")
    wanted = annotators.settings(cfgs, RunContext(batch_size=d.batch_size, preprocess=d.preprocess))
    from recaption.annotators.groups import resolve_reads

    # a chained group records what it reads (this pass's groups or the folder's): stale when they change
    held = (folders.read_record(ann_dir) or {}).get("groups") or {}
    resolve_reads(wanted, held)
    preflight(ex)
    with folders.locked(ann_dir):
        # the folder's chained groups too: new values of a group they read make them stale
        folders.claim_annotations(ann_dir, wanted, overwrite, annotators.dependents(held | wanted),
                                  {g: annotators.get(g).added_settings for g in wanted})
        spec = AnnotateSpec(ann_dir=ann_dir, models=AnnotatorSpec(cfgs, {n: annotators.target(n) for n in cfgs},
                                                                 device=ex.device),
                            groups=wanted, decode=d, overwrite=overwrite)
        t0 = time.time()
        reports = run_stage(AnnotateStage(spec), shards, ex, desc=verb, count_of=sample_counts(ann_dir))
        if overwrite:  # every file redone: none lacks a settings key an older recaption did not record
            folders.settle_unrecorded(ann_dir, [r["shard"] for r in reports if r["status"] != "failed"], wanted)
    return AnnotateResult(summarise(reports, time.time() - t0, verb), ann_dir)


def _known_names(by_name: dict, verb: str, own: tuple[str, ...]) -> None:
    """A keyword that names no annotator is one line naming the nearest annotators and arguments."""
    from recaption.errors import unknown

    names = annotators.names()
    bad = next((k for k in by_name if k not in names), None)
    if bad is not None:
        raise unknown(f"annotator or {verb} argument", bad, names + list(own))


def decode_options(d: DecodeOptions, cfgs: dict) -> DecodeOptions:
    """The input settings checked (one line naming the one that is wrong) and completed."""
    if d.preprocess not in PREPROCESS:
        raise RecaptionError(f"--preprocess takes {' or '.join(PREPROCESS)}, got {d.preprocess!r}")
    for flag, v in (("--batch-size", d.batch_size), ("--max-pixels", d.max_pixels)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise RecaptionError(f"{flag} must be a whole number of at least 1, got {v!r}")
    d.limits.checked()
    cap = cfgs.get("captions") or next((c for n, c in cfgs.items() if n.startswith("captions.")), None)
    return dataclasses.replace(d, image_keys=tuple(d.image_keys), max_pixels=d.max_pixels or DEFAULT_MAX_PIXELS,
                               batch_size=d.batch_size or (cap.batch_size if cap is not None else 64))


def sample_counts(ann_dir: str):
    """`count_of` for a stage over input shards (the progress total, known before it starts): a
    shard's annotation file's row count where it has one (every sample a row), else
    img2dataset's stats file beside it; None where neither says."""
    from recaption.io import annotations as ann
    from recaption.io.atomic import listdir
    from recaption.io.sources import shard_name

    present = set(listdir(ann_dir))  # one listing, not a request per shard

    def count(url: str) -> int | None:
        name = shard_name(url)
        if f"{name}.parquet" in present:
            try:
                return ann.row_count(ann.path_for(ann_dir, name))
            except Exception:  # unreadable: the stage says so for that shard
                pass
        return sample_count_hint(url)

    return count


OTHER_REASONS = "other reasons"
TOP_REASONS = 10


def top_reasons(reasons: Counter, top: int = TOP_REASONS) -> dict:
    """The most common reasons with their counts, the rest summed under `other reasons`, so the
    counts add up to every sample counted."""
    common = dict(reasons.most_common(top))
    rest = sum(reasons.values()) - sum(common.values())
    return common | ({OTHER_REASONS: rest} if rest else {})


def summarise(reports: list[dict], seconds: float, verb: str = "annotate") -> dict:
    """One summary from per-shard reports: counts, failures with reasons, timings."""
    by = {"done": 0, "skipped": 0, "failed": 0}
    timings: dict[str, float] = {}
    samples = errors = processed = 0
    reasons: Counter = Counter()
    for r in reports:
        by[r["status"]] = by.get(r["status"], 0) + 1
        samples += r.get("samples", 0)
        if r["status"] == "done":
            processed += r.get("samples", 0)
            errors += r.get("errors", 0)
            reasons.update(r.get("reasons") or {})
            for k, v in (r.get("seconds") or {}).items():
                timings[k] = round(timings.get(k, 0.0) + v, 3)
    failed = [{"shard": r["shard"], "error": r.get("error")} for r in reports if r["status"] == "failed"]
    failed += [{"shard": r["shard"], "error": r["read_error"]} for r in reports if r.get("read_error")]
    fusion: dict = {}  # chained group -> {clause or reason: rows}, from the shards computed now
    for r in reports:
        for g, counts in ((r.get("info") or {}).get("fusion") or {}).items():
            mine = fusion.setdefault(g, {})
            for k, v in counts.items():
                mine[k] = mine.get(k, 0) + v
    extra = {"fusion": {g: {"sent": sum(v for k, v in c.items() if not k.startswith("not sent")),
                            "by": dict(sorted(c.items()))} for g, c in sorted(fusion.items())}} if fusion else {}
    return _summary_base(verb) | extra | {
        "shards": by, "samples": samples, "errors": errors, "seconds": round(seconds, 3),
        "samples_per_second": round(processed / seconds, 2) if seconds > 0 and processed else None,
        "stage_seconds": timings, "error_reasons": top_reasons(reasons),
        "failed_shards": sorted(failed, key=lambda f: f["shard"]),
        "all_failed": processed > 0 and errors == processed,
    }


# -- mix -------------------------------------------------------------------------------------
MIX_ARGUMENTS = ("input_spec", "ann_dir", "out_dir", "cfg", "dry_run", "overlay", "overwrite", "execution",
                 "arguments", "storage_options")


@scoped
def mix(input_spec, ann_dir: str, out_dir: str | None = None, cfg=None, *, dry_run: bool = False,
        overlay: bool = False, overwrite: bool = False, execution=None, arguments: dict | None = None,
        storage_options: dict | str | None = None, **settings) -> MixResult:
    """Write the caption-mixed shard set or, with dry_run, only say what it would do (and what
    every other strategy would do at the same threshold or fraction, in `strategies`).

    The mix is `cfg` (a MixConfig or a mapping of its fields) and/or its fields as keywords
    (`strategy="sieve", fraction=0.2, filters=["basic"]`), checked against MixConfig's fields
    and types. With overlay, write the decisions, drops and summary but no shards:
    `recaption.webdataset` applies them to the input shards as they are read. `arguments` is
    recorded in the summary. Returns a `MixResult` (the summary dict)."""
    c = mix_config(cfg, settings, known=MIX_ARGUMENTS)
    summary = _mix(input_spec, ann_dir, out_dir, c, dry_run=dry_run, overlay=overlay, overwrite=overwrite,
                   execution=execution_of(execution), arguments=arguments)
    return MixResult(summary, None if dry_run else out_dir, ann_dir, input_spec, c.filters)


def _mix(input_spec, ann_dir: str, out_dir: str | None, cfg, *, dry_run: bool = False, overlay: bool = False,
         overwrite: bool = False, execution: Execution | None = None, arguments: dict | None = None,
         extra_summary: dict | None = None, claim: dict | None = None) -> dict:
    """`mix` over a MixConfig; `claim` is an output record already held (by `run`), otherwise
    `out_dir` is claimed here; `extra_summary` is added to the summary written."""
    from recaption.engines import mapper
    from recaption.mixing.compare import side_by_side
    from recaption.mixing.plan import check_json_tags, check_shards, is_decisions_file
    from recaption.mixing.pool import dry_counts, pool_pass

    cfg.validate()
    if overlay and dry_run:
        raise RecaptionError("--overlay writes the decisions files and --dry-run writes nothing: choose one")
    if out_dir is None and not dry_run:
        raise RecaptionError("give --out, or --dry-run to only see the numbers")
    ex = (execution or Execution()).validate()
    shards = shards_of(input_spec)
    if out_dir is not None and not dry_run:
        folders.refuse_overlap(out_dir, shards)
        folders.refuse_annotation_overlap(out_dir, ann_dir)
    _check_inputs(cfg)
    t0 = time.time()
    # annotations only, columnar; fails with one line (no annotation file at all) before anything exists
    dry = dry_run or out_dir is None
    pool = pool_pass(shards, ann_dir, cfg, mapper(ex), synthetic=True if dry else None, compare=dry)
    if dry:
        counts, n_out = dry_counts(pool, cfg)
        summary = _mix_summary(cfg, pool, counts, n_out, arguments, dry_run=True)
        summary["strategies"] = side_by_side(pool.source, cfg, pool, fixed={_chosen(cfg): pool.numbers.threshold})
        return summary
    check_shards(pool)  # every shard is the one it was annotated from, before anything is written
    check_json_tags(pool, cfg)
    preflight(ex, cpu_only=True)
    settings = mix_identity(cfg)
    if overlay:  # no output shards: how they would be cut is no part of an overlay
        settings = {k: v for k, v in settings.items() if k not in ("samples_per_shard", "keep_sharding")}
    with folders.locked(out_dir):
        # an overlay and the shards it stands for are different kinds of folder: neither resumes the other
        left: list = []
        rec = claim or folders.claim_output(out_dir, "overlay" if overlay else "mix",
                                            {"mix": settings, "annotations": ann_dir, "shards": len(shards)},
                                            overwrite, owned=is_decisions_file, left=left)
        return _write_mix(input_spec, ann_dir, out_dir, cfg, pool, shards, rec, ex, overlay, arguments,
                          extra_summary, t0, left)


def _write_mix(input_spec, ann_dir, out_dir, cfg, pool, shards, rec, ex, overlay, arguments, extra_summary,
               t0, left: list | None = None) -> dict:
    """A mix's plan and shards (or an overlay's plan), in a folder already claimed and locked;
    `left`: what replacing an earlier run left in place (not recaption's files)."""
    from recaption.engines import run_stage
    from recaption.mixing.plan import plan, plan_dict, prune, recorded_name
    from recaption.stages.write_mix import MixWriteStage

    planned = {f.name for f in pool.source.files}  # each decisions file recorded before it is written
    folders.record_written(out_dir, rec, ["_summary.json", "_dropped.parquet",
                                          *(recorded_name(n) for n in sorted(planned))])
    folders.remove_summary(out_dir)  # readers take a summary for a finished plan: none while this one runs
    plans, counts = plan(pool, cfg, out_dir)
    stale = prune(out_dir, rec, planned)  # an earlier plan's decisions of shards not planned now
    if stale:
        log.info("removed the decisions of %d input shard(s) no longer planned: %s", len(stale), ", ".join(stale[:5]))
    if overlay:
        summary = _mix_summary(cfg, pool, counts, None, arguments, overlay=True)
        # a key kept in two rows fails the shard, as it fails a mix's output shard: a reader refuses it
        summary["shard_errors"] = summary["shard_errors"] + [
            {"shard": r["shard"], "error": f"{r['error']}; a reader of the overlay refuses this shard"}
            for r in counts["repeated"]]
        summary["written"] = counts["kept"] - sum(r["kept"] for r in counts["repeated"])  # what readers yield
        summary["decisions_removed"] = stale
        if left:
            summary["foreign_files_left"] = left
        return _write_mix_summary(out_dir, summary, input_spec, ann_dir, {"pool_and_plan": round(time.time() - t0, 3)},
                                  extra_summary)
    folders.record_written(out_dir, rec, [f"{p.name}{s}" for p in plans for s in (".tar", ".parquet", "_stats.json")])
    removed = _remove_unplanned(out_dir, rec, {p.name for p in plans})
    t_plan = time.time() - t0
    reports = run_stage(MixWriteStage(), [plan_dict(p) for p in plans], ex, desc="write",
                        count_of=lambda p: sum(x["end"] - x["start"] for x in p["parts"]), cpu_only=True)
    failed = [r for r in reports if r["status"] == "failed"]
    for r in failed:  # its previous output is not what its record says now: it goes, so the two agree
        if _remove_output_shard(out_dir, r["shard"]):
            log.warning("output shard %s failed; its output from an earlier run was removed", r["shard"])
    summary = _mix_summary(cfg, pool, counts, len(plans), arguments)
    summary["decisions_removed"] = stale
    if left:
        summary["foreign_files_left"] = left
    summary["written"] = sum(r.get("samples", 0) for r in reports if r["status"] != "failed")
    summary["failed_output_shards"] = failed
    summary["output_shards_rewritten"] = sum(r["status"] == "rewritten" for r in reports)
    summary["output_shards_removed"] = removed
    if summary["output_shards_rewritten"] or removed:
        log.info("rewrote %d output shard(s) whose inputs changed, removed %d no longer planned",
                 summary["output_shards_rewritten"], removed)
    return _write_mix_summary(out_dir, summary, input_spec, ann_dir,
                              {"pool_and_plan": round(t_plan, 3), "write": round(time.time() - t0 - t_plan, 3)},
                              extra_summary)


def _remove_unplanned(out_dir: str, rec: dict, planned: set[str]) -> int:
    """Output shards an earlier plan of this folder wrote that the plan now has no place for (fewer
    kept samples): their files go (only files the record lists), and so do their names in the
    record. Returns how many shards."""
    written = set(rec.get("written", []))  # a name with a `/` is not an output shard's (an edited record)
    names = {n.rsplit("_stats.json", 1)[0] for n in written if n.endswith("_stats.json") and "/" not in n}
    gone = sum(_remove_output_shard(out_dir, name, written) for name in sorted(names - planned))
    unplanned = {f"{n}{s}" for n in names - planned for s in ("_stats.json", ".tar", ".parquet")}
    if unplanned & set(rec.get("written", [])):
        rec["written"] = [n for n in rec["written"] if n not in unplanned]
        folders.write_record(out_dir, rec)
    return gone


def _remove_output_shard(out_dir: str, name: str, only: set | None = None) -> bool:
    """Remove an output shard's files (the stats first: a shard without them is unfinished), of
    `only` the names given; whether any was there."""
    from recaption.io.atomic import exists, remove

    found = False
    for suffix in ("_stats.json", ".tar", ".parquet"):
        p = join(out_dir, name + suffix)
        if (only is None or name + suffix in only) and exists(p):
            remove(p)
            found = True
    return found


def _write_mix_summary(out_dir: str, summary: dict, input_spec, ann_dir: str, seconds: dict,
                       extra: dict | None) -> dict:
    """Complete a written mix's (or overlay's) summary and write it last: its presence marks the
    folder finished."""
    summary.update(input=input_spec if isinstance(input_spec, str) else list(input_spec), annotations=ann_dir,
                   seconds=seconds)
    summary.update(extra or {})
    write_text(join(out_dir, "_summary.json"), json.dumps(summary, indent=2, default=str, allow_nan=False))
    return summary


def mix_identity(cfg) -> dict:
    """The mix settings a folder records; no filters (no caption keys, no duplicate or overlap
    rules) leaves the key out, as folders made before they existed recorded them, so those resume."""
    d = dataclasses.asdict(cfg)
    if not d["filters"]:
        del d["filters"]
    if d.get("caption_keys") == "none":
        del d["caption_keys"]
    if not d.get("json_tags"):
        d.pop("json_tags", None)
    for k, default in (("dedup", {}), ("dedup_keep", "first"), ("decontaminate", None), ("decontaminate_rules", {}),
                       ("decontaminate_model", None), ("synthetic_group", None)):  # as older folders recorded them
        if d.get(k) == default:
            del d[k]
    return d


def _chosen(cfg) -> str:
    from recaption.mixing.compare import variant_name

    return variant_name(cfg.strategy, cfg.filter_synthetic)


def _mix_summary(cfg, pool, counts, n_out, arguments, dry_run=False, overlay=False) -> dict:
    dropped_total = sum(counts["dropped"].values())
    return _summary_base("mix") | {
        "strategy": cfg.strategy, "dry_run": dry_run, "overlay": overlay,
        "counts": {"read": counts["read"], "written": counts["kept"], "raw": counts["raw"],
                   "synthetic": counts["synthetic"], "dropped": dropped_total, "errors": counts["errors"],
                   "dropped_by_reason": counts["dropped"], "output_shards": n_out,
                   **({"synthetic_groups": counts["synthetic_groups"]} if "synthetic_groups" in counts else {})},
        "threshold": pool.numbers.threshold, "threshold_column": cfg.threshold_column,
        "fraction": cfg.fraction, "alpha": cfg.alpha, "filter_synthetic": cfg.filter_synthetic,
        "caption_keys": cfg.caption_keys, "filters": counts["filters"], **_removal_summary(pool),
        **({"synthetic_group": cfg.synthetic_group} if cfg.synthetic_group else {}),
        **({"json_tags": cfg.json_tags} if cfg.json_tags else {}),
        "min_max": pool.ranges, "captioner": pool.captioners[0] if len(pool.captioners) == 1 else pool.captioners,
        "shard_errors": counts["shard_errors"], "arguments": arguments or {},
        **({"decisions": counts["decisions"]} if "decisions" in counts else {}),
    }


def _removal_summary(pool) -> dict:
    """`dedup` (per rule: what it dropped, of how many compared) and `decontaminate` (EVAL, its
    images, per rule what it dropped), where the mix had them."""
    r = pool.removal
    if r is None:
        return {}
    out = {"dedup": r.dedup} if r.dedup else {}
    return out | ({"decontaminate": r.decontaminate} if r.decontaminate else {})


# -- run: annotate + mix from a recipe ---------------------------------------------------------
@scoped
def run(recipe: str | dict, input_spec, out_dir: str, *, sets: list[str] | None = None,
        annotations: str | None = None, overwrite: bool = False, max_pixels: int | None = None,
        decode=None, execution=None, arguments: dict | None = None,
        storage_options: dict | str | None = None) -> RunResult:
    """Caption, score and mix in one command, from a recipe; resumable shard by shard. A re-run that
    changes only the mix settings (with --overwrite) reuses the annotations and redoes the mix.
    `decode` says how images are read for the annotate part (image keys, the input path, nvJPEG);
    its batch size is the recipe's; `max_pixels` replaces its decompression-bomb limit; its read
    limits are checked before anything is created. `decode` and `execution` take their objects or
    mappings. Returns a `RunResult` (the summary dict; its annotate part as `.annotate`)."""
    from recaption.mixing.plan import is_decisions_file
    from recaption.recipes import load_recipe, recipe_parts, validate

    r = recipe if isinstance(recipe, dict) else load_recipe(recipe, sets)
    if isinstance(recipe, dict):
        validate(r, "given")  # its values' types and ranges, as a loaded recipe's are
    parts = recipe_parts(r)  # every section validated before anything is created
    ex = execution_of(execution).validate()
    if ex.device is None and r.get("device"):
        ex = dataclasses.replace(ex, device=r["device"])
    cfgs = annotator_configs(parts.annotators)
    _check_device(ex.device)
    shards = shards_of(input_spec)
    ann_dir = annotations or join(out_dir, "_annotations")
    folders.refuse_overlap(out_dir, shards)
    folders.refuse_overlap(ann_dir, shards, "annotation folder")
    folders.refuse_annotation_overlap(out_dir, ann_dir)
    d = dataclasses.replace(decode_of(decode), batch_size=r.get("batch_size"))
    if max_pixels is not None:
        d = dataclasses.replace(d, max_pixels=max_pixels)
    identity = {"recipe": r, "annotations": None if annotations is None else annotations}
    if d.preprocess != "fast":  # the annotations differ (their groups record it): so does the run
        identity["preprocess"] = d.preprocess
    prev = folders.read_record(out_dir)
    same_annotations = bool(prev and prev.get("kind") == "run" and
                            _without_mix(prev.get("identity")) == _without_mix(identity))
    decode = decode_options(d, cfgs)  # checked (read limits included) before any folder exists
    _check_inputs(parts.mix, "decontaminate")
    _check_recipe_scores(parts, annotations)
    preflight(ex)
    with folders.locked(out_dir):
        left: list = []
        rec = folders.claim_output(out_dir, "run", identity, overwrite, hint_same_annotations=same_annotations,
                                   owned=is_decisions_file, left=left)
        folders.record_written(out_dir, rec, ["_summary.json", "_dropped.parquet"])
        ann_summary = {}
        if parts.asks_for_models or parts.mix.filter_set.needs_metrics or parts.mix.removes:  # fingerprints
            ann_summary = annotate(input_spec, ann_dir, cfgs, decode=decode,
                                   overwrite=overwrite and not same_annotations, execution=ex)
            _refuse_none_annotated(ann_summary)
        summary = _mix(input_spec, ann_dir, out_dir, parts.mix, execution=ex, arguments=arguments, claim=rec,
                       extra_summary={"annotate": ann_summary, "recipe": r,
                                      **({"foreign_files_left": left} if left else {})})
    summary["failed_shards"] = ann_summary.get("failed_shards", [])
    return RunResult(summary, out_dir, ann_dir, input_spec, parts.mix.filters)


def _refuse_none_annotated(summary: dict) -> None:
    """A run whose annotate pass annotated no shard stops there, naming the first failure (the mix
    would only say that there are no annotation files)."""
    by = summary.get("shards") or {}
    failed = summary.get("failed_shards") or []
    if failed and not by.get("done") and not by.get("skipped"):
        first = failed[0]
        more = f" (and {len(failed) - 1} more shards)" if len(failed) > 1 else ""
        raise RecaptionError(f"no shard could be annotated: {first['shard']}: {first['error']}{more}")


def _check_inputs(cfg, flag: str = "--decontaminate") -> None:
    """The files a mix will read besides the annotations exist (said before anything is created)."""
    from recaption.io.atomic import exists

    if cfg.decontaminate and not exists(cfg.decontaminate):
        raise RecaptionError(f"{flag} {cfg.decontaminate}: not found")


def _check_recipe_scores(parts, annotations: str | None) -> None:
    """A recipe whose mix cuts on scores it does not compute (e.g. `clip: false` with the sieve
    strategy) is refused, unless the given annotation folder already holds them."""
    from recaption.recipes import missing_groups

    missing = missing_groups(parts)
    if missing and annotations is not None:
        held = (folders.read_record(annotations) or {}).get("groups") or {}
        missing = [g for g in missing if g not in held]
    if missing:
        cfg = parts.mix
        raise RecaptionError(f"mix.strategy {cfg.strategy} reads the {' and '.join(missing)} columns, which this "
                             f"recipe does not compute ({', '.join(missing)}: null or false); give the recipe "
                             f"{'those sections' if len(missing) > 1 else 'that section'}, or choose another "
                             "mix.strategy")


def _without_mix(identity) -> str:
    ident = dict(identity or {})
    ident["recipe"] = {k: v for k, v in (ident.get("recipe") or {}).items()
                       if k not in ("mix", "filters", "dedup", "decontaminate")}
    return json.dumps(ident, sort_keys=True, default=str)


# -- import-captions -------------------------------------------------------------------------
@scoped
def import_captions(input_spec, ann_dir: str, captions: str, *, key_column: str = "key",
                    caption_column: str = "caption", captioner: str = "imported", overwrite: bool = False,
                    image_keys=DEFAULT_IMAGE_KEYS, limits=None, execution=None,
                    storage_options: dict | str | None = None) -> ImportResult:
    """Write annotation files whose captions come from a CSV/parquet made elsewhere; `limits` and
    `execution` take their objects or mappings. Returns an `ImportResult` (the summary dict)."""
    from recaption.engines import run_stage
    from recaption.io.atomic import exists
    from recaption.stages.import_captions import ImportSpec, ImportStage, check_some_match, load_caption_table

    ex = execution_of(execution).validate()
    limits = limits_of(limits).checked()
    if not exists(captions):
        raise RecaptionError(f"caption file not found: {captions}")
    shards = shards_of(input_spec)
    folders.refuse_overlap(ann_dir, shards, "annotation folder")
    t0 = time.time()
    table = load_caption_table(captions, key_column, caption_column)
    check_some_match(shards, table, key_column, captions, tuple(image_keys))
    groups = {"captions": {"imported": model_identity(captions), "key_column": key_column,
                           "caption_column": caption_column, "captioner": captioner}}
    with folders.locked(ann_dir):
        folders.claim_annotations(ann_dir, groups, overwrite, annotators.dependents(groups))
        spec = ImportSpec(ann_dir, captions, key_column, caption_column, captioner, overwrite,
                          image_keys=tuple(image_keys), groups=groups, limits=limits)
        stage = ImportStage(spec)
        stage.table = table  # run in this process (one worker): the table read for the check is the one used
        reports = run_stage(stage, shards, dataclasses.replace(ex, workers=1), desc="import",
                            count_of=sample_counts(ann_dir))
    summary = summarise(reports, time.time() - t0, "import-captions")
    summary["matched"] = sum((r.get("info") or {}).get("matched", 0) for r in reports)
    return ImportResult(summary, ann_dir)


# -- reports and listings --------------------------------------------------------------------
def report(path: str, out_dir: str, *, input_spec: str | None = None, fraction: float | None = None,
           annotations: str | None = None, filters=None, unblur: bool = False) -> Page:
    """Render the HTML report of an annotation folder, a mixed output folder or a run's folder; returns the page.

    `fraction` sets the per-strategy view (default: the folder's own, else 0.3); `filters` previews
    rules on an annotation folder (an output folder shows its own); `annotations` says where an
    output folder's annotation files are when they moved; the grids of the highest NSFW scores
    (punsafe, open_nsfw) are blurred unless `unblur` (refused where there are none). Returns the
    `Page` (`str()`: its path; `.open()` shows it in a browser)."""
    from recaption.errors import require

    require("matplotlib", "report")
    from recaption.report.data import load
    from recaption.report.html import render

    return Page(render(load(path, input_spec, fraction, annotations=annotations, filters=filters, unblur=unblur),
                       out_dir))


@scoped
def verify(folder: str, input_spec=None, *, storage_options: dict | str | None = None) -> Verification:
    """What in a mix, overlay or annotation folder disagrees with its record and its inputs, one
    line each (`recaption.mixing.verify`): a `Verification` (a list), empty when it holds.
    `input_spec` gives an annotation folder's shards (refused for a mix, overlay or run folder,
    whose decisions name the shards it read)."""
    from recaption.mixing.verify import verify as check

    return Verification(check(folder, shards_of(input_spec) if input_spec is not None else None), folder)


def recipes() -> dict[str, dict]:
    """The recipes shipped with recaption, by name."""
    from recaption.recipes import list_recipes

    return list_recipes()


def presets() -> dict[str, dict]:
    """The captioner presets, by name."""
    from recaption.captioners.base import list_presets

    return list_presets()
