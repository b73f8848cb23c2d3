"""`recaption` command line: thin, fast to start (heavy imports happen inside the verbs)."""
from __future__ import annotations

import json
import logging
import sys
from enum import Enum
from typing import Annotated, List, Optional

import typer

app = typer.Typer(
    name="recaption", no_args_is_help=True, add_completion=False, rich_markup_mode="markdown",
    help="Regenerate, score and mix captions of WebDataset image-text shards.\n\n"
         "INPUT is a shard folder, a .tar, a glob, a brace pattern (`s/{00000..00127}.tar`), or a text file "
         "listing shards; any fsspec URL works (s3://, gs://, https://).\n\n"
         "Typical flow: `recaption annotate` (caption + score) then `recaption mix`; or `recaption run RECIPE` "
         "for everything in one command.",
)
log = logging.getLogger("recaption")
STATE = {"debug": False}


class Decoding(str, Enum):
    greedy = "greedy"
    beam = "beam"
    sample = "sample"


class Strategy(str, Enum):
    raw = "raw"
    synthetic = "synthetic"
    threshold = "threshold"
    both = "both"
    sieve = "sieve"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


# -- shared option groups --------------------------------------------------------------------
CAP = "Captioner"
SCO = "Scoring"
RUN = "Execution"
O = typer.Option


def _clip(clip_model, clip_pretrained, no_clip, device, dtype):
    if no_clip:
        return None
    from recaption.scoring.clip import ClipConfig

    return ClipConfig(model=clip_model, pretrained=clip_pretrained, device=device, dtype=dtype)


def _sieve(sieve_model, no_sieve):
    if no_sieve:
        return None
    from recaption.api import default_sieve_model

    return sieve_model or default_sieve_model()


def _print(summary: dict, title: str):
    from rich.console import Console
    from rich.table import Table

    c = Console(stderr=False)
    t = Table(title=title, show_header=False)
    for k, v in summary.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v, default=str)
        t.add_row(str(k), str(v))
    c.print(t)


def _exit_for(summary: dict):
    """Exit 1 when any shard failed or could not be read whole; the summary says which."""
    if summary.get("failed_shards") or summary.get("failed_output_shards") or summary.get("shard_errors"):
        raise typer.Exit(1)


# -- verbs -----------------------------------------------------------------------------------
def _ray_resources(cpus, gpus) -> dict:
    return {k: v for k, v in (("num_cpus", cpus), ("num_gpus", gpus)) if v is not None}


def _annotate_cmd(input, out, captioner, clip_model, clip_pretrained, no_clip, sieve_model, no_sieve, mask,
                  batch_size, device, engine, workers, ray_address, overwrite, quiet, max_pixels, image_keys,
                  cap_opts, caption_only=False, score_only=False, ray_resources=None):
    from recaption import api

    summary = api.annotate(
        input, out, captioner=None if score_only else captioner, caption_options=cap_opts,
        clip=None if caption_only else _clip(clip_model, clip_pretrained, no_clip, device, cap_opts.get("dtype")),
        sieve_model=None if caption_only else _sieve(sieve_model, no_sieve), sieve_mask=mask,
        batch_size=batch_size, image_keys=tuple(image_keys.split(",")), max_pixels=max_pixels,
        overwrite=overwrite, engine=engine.value, workers=workers, device=device, ray_address=ray_address,
        ray_resources=ray_resources, quiet=quiet,
    )
    _print(summary, f"annotations in {out}")
    _exit_for(summary)


# Each shared option is declared once, so every verb shows the same name, help and panel.
def _opt(*names, help=None, panel=None):
    return typer.Option(*names, help=help, rich_help_panel=panel)


NumCaptions = Annotated[Optional[int], _opt(help="candidates per image (sample or beam)", panel=CAP)]
DecodingOpt = Annotated[Optional[Decoding], _opt(help="greedy, beam or sample (nucleus/top-k)", panel=CAP)]
NumBeams = Annotated[Optional[int], _opt(panel=CAP)]
TopP = Annotated[Optional[float], _opt(panel=CAP)]
TopK = Annotated[Optional[int], _opt(panel=CAP)]
Temperature = Annotated[Optional[float], _opt(panel=CAP)]
MaxNew = Annotated[Optional[int], _opt(panel=CAP)]
MinNew = Annotated[Optional[int], _opt(panel=CAP)]
RepPenalty = Annotated[Optional[float], _opt(panel=CAP)]
Seed = Annotated[Optional[int], _opt(help="same seed, same captions", panel=CAP)]
Prompt = Annotated[Optional[str], _opt(help="text prompt, removed from the front of each caption", panel=CAP)]
Template = Annotated[Optional[str], _opt(help="vLLM prompt template (prompts/templates name or file); may use {alt_text}", panel=CAP)]
DType = Annotated[Optional[str], _opt(help="auto, float32, bfloat16, float16", panel=CAP)]
Quantize = Annotated[Optional[str], _opt(help="8bit or 4bit (bitsandbytes; recaption[quant])", panel=CAP)]
Backend = Annotated[Optional[str], _opt(help="blip, blip2, coca or vllm, when a model id does not tell", panel=CAP)]
Model = Annotated[Optional[str], _opt(help="model id or local path replacing the preset's (keeps its decoding)", panel=CAP)]
TrustRemote = Annotated[bool, _opt(help="allow model repos to run their own code (off by default)", panel=CAP)]

ClipModel = Annotated[str, _opt(help="open_clip name, hf-hub:org/repo or local-dir:/path", panel=SCO)]
ClipPretrained = Annotated[Optional[str], _opt(help="pretrained tag or local checkpoint file", panel=SCO)]
NoClip = Annotated[bool, _opt(help="skip CLIP scores", panel=SCO)]
SieveModel = Annotated[Optional[str], _opt(help="sentence-transformers id or path (default all-MiniLM-L6-v2)", panel=SCO)]
NoSieve = Annotated[bool, _opt(help="skip SIEVE scores", panel=SCO)]
Mask = Annotated[str, _opt(help="mask list: sieve, sieve-long, none, or a file with one phrase a line", panel=SCO)]

BatchSize = Annotated[Optional[int], _opt(help="images per model batch (default: the preset's)", panel=RUN)]
Device = Annotated[Optional[str], _opt(help="cuda, cuda:1, cpu (default: cuda when present)", panel=RUN)]
EngineOpt = Annotated[Engine, _opt(help="local (a worker per GPU) or ray", panel=RUN)]
Workers = Annotated[Optional[int], _opt(help="worker processes/actors (default: one per GPU)", panel=RUN)]
RayAddress = Annotated[Optional[str], _opt(help="Ray cluster address (engine ray)", panel=RUN)]
ActorCpus = Annotated[Optional[float], _opt(help="CPUs per Ray actor (default 0.5 on CPU, 1 with GPUs)", panel=RUN)]
ActorGpus = Annotated[Optional[float], _opt(help="GPUs per Ray actor (default 1 when the cluster has GPUs)", panel=RUN)]
Overwrite = Annotated[bool, _opt(help="redo finished shards / replace another run's output", panel=RUN)]
Quiet = Annotated[bool, _opt("--quiet", "-q", help="no progress bar", panel=RUN)]
MaxPixels = Annotated[Optional[int], _opt(help="decompression-bomb limit in pixels", panel=RUN)]
ImageKeys = Annotated[str, _opt(help="image fields, in priority order", panel=RUN)]
InputArg = Annotated[str, typer.Argument(help="shard folder, .tar, glob, brace pattern or list file")]


CAPTION_KEYS = ("model", "num_captions", "decoding", "num_beams", "top_p", "top_k", "temperature", "max_new_tokens",
                "min_new_tokens", "repetition_penalty", "seed", "prompt", "template", "dtype", "quantize", "backend",
                "trust_remote_code", "batch_size")


def _caption_options(args: dict) -> dict:
    """A verb's arguments -> captioner/decoding overrides; unset ones left out."""
    kw = {("strategy" if k == "decoding" else k): args[k] for k in CAPTION_KEYS}
    if kw["strategy"] is not None:
        kw["strategy"] = kw["strategy"].value
    if not kw["trust_remote_code"]:
        kw.pop("trust_remote_code")
    return {k: v for k, v in kw.items() if v is not None}


@app.command(epilog="Examples:\n\n"
             "    recaption caption shards/ --out ann/ --captioner blip-base\n\n"
             "    recaption caption shards/ --out ann/ --captioner sieve --num-captions 4 --seed 1\n\n"
             "    recaption caption 's3://b/{00000..00099}.tar' -o s3://b/ann -c blip2-opt-2.7b --quantize 8bit")
def caption(
    input: InputArg,
    out: str = O(..., "--out", "-o", help="annotation folder (one NAME.parquet per shard)"),
    captioner: str = O("blip-base", "--captioner", "-c", help="preset (see `recaption models`), HF id or local path", rich_help_panel=CAP),
    model: Model = None, num_captions: NumCaptions = None, decoding: DecodingOpt = None, num_beams: NumBeams = None,
    top_p: TopP = None, top_k: TopK = None, temperature: Temperature = None, max_new_tokens: MaxNew = None,
    min_new_tokens: MinNew = None, repetition_penalty: RepPenalty = None, seed: Seed = None, prompt: Prompt = None,
    template: Template = None, dtype: DType = None, quantize: Quantize = None, backend: Backend = None,
    trust_remote_code: TrustRemote = False,
    batch_size: BatchSize = None, device: Device = None, engine: EngineOpt = Engine.local, workers: Workers = None,
    ray_address: RayAddress = None, actor_cpus: ActorCpus = None, actor_gpus: ActorGpus = None,
    overwrite: Overwrite = False, quiet: Quiet = False, max_pixels: MaxPixels = None, image_keys: ImageKeys = "jpg,jpeg,png,webp",
):
    """Write N synthetic captions per sample into SPEC 2 annotation files."""
    opts = _caption_options(locals())
    _annotate_cmd(input, out, captioner, None, None, True, None, True, "sieve", batch_size, device, engine, workers,
                  ray_address, overwrite, quiet, max_pixels, image_keys, opts, caption_only=True,
                  ray_resources=_ray_resources(actor_cpus, actor_gpus))


@app.command(epilog="Examples:\n\n"
             "    recaption score shards/ --annotations ann/\n\n"
             "    recaption score shards/ -a ann/ --clip-model ViT-L-14 --clip-pretrained openai --no-sieve\n\n"
             "    recaption score shards/ -a ann/ --mask sieve-long --overwrite")
def score(
    input: InputArg,
    annotations: str = O(..., "--annotations", "-a", help="annotation folder to fill (created for raw-only scoring)"),
    clip_model: ClipModel = "ViT-B-32", clip_pretrained: ClipPretrained = "openai", no_clip: NoClip = False,
    sieve_model: SieveModel = None, no_sieve: NoSieve = False, mask: Mask = "sieve",
    batch_size: BatchSize = None, device: Device = None, engine: EngineOpt = Engine.local, workers: Workers = None,
    ray_address: RayAddress = None, actor_cpus: ActorCpus = None, actor_gpus: ActorGpus = None,
    overwrite: Overwrite = False, quiet: Quiet = False, max_pixels: MaxPixels = None, image_keys: ImageKeys = "jpg,jpeg,png,webp",
):
    """Fill clip_raw, clip_captions and SIEVE columns of annotation files, atomically."""
    _annotate_cmd(input, annotations, None, clip_model, clip_pretrained, no_clip, sieve_model, no_sieve, mask,
                  batch_size, device, engine, workers, ray_address, overwrite, quiet, max_pixels, image_keys, {},
                  score_only=True, ray_resources=_ray_resources(actor_cpus, actor_gpus))


@app.command(epilog="Examples:\n\n"
             "    recaption annotate shards/ --out ann/ --captioner sieve\n\n"
             "    recaption annotate shards/ -o ann/ -c coca-vit-l-14 --clip-model ViT-L-14 --engine ray")
def annotate(
    input: InputArg,
    out: str = O(..., "--out", "-o", help="annotation folder"),
    captioner: str = O("sieve", "--captioner", "-c", help="preset, HF id or local path", rich_help_panel=CAP),
    model: Model = None, num_captions: NumCaptions = None, decoding: DecodingOpt = None, num_beams: NumBeams = None,
    top_p: TopP = None, top_k: TopK = None, temperature: Temperature = None, max_new_tokens: MaxNew = None,
    min_new_tokens: MinNew = None, repetition_penalty: RepPenalty = None, seed: Seed = None, prompt: Prompt = None,
    template: Template = None, dtype: DType = None, quantize: Quantize = None, backend: Backend = None,
    trust_remote_code: TrustRemote = False,
    clip_model: ClipModel = "ViT-B-32", clip_pretrained: ClipPretrained = "openai", no_clip: NoClip = False,
    sieve_model: SieveModel = None, no_sieve: NoSieve = False, mask: Mask = "sieve",
    batch_size: BatchSize = None, device: Device = None, engine: EngineOpt = Engine.local, workers: Workers = None,
    ray_address: RayAddress = None, actor_cpus: ActorCpus = None, actor_gpus: ActorGpus = None,
    overwrite: Overwrite = False, quiet: Quiet = False, max_pixels: MaxPixels = None, image_keys: ImageKeys = "jpg,jpeg,png,webp",
):
    """Caption and score in one pass: each image is read and decoded once."""
    opts = _caption_options(locals())
    _annotate_cmd(input, out, captioner, clip_model, clip_pretrained, no_clip, sieve_model, no_sieve, mask,
                  batch_size, device, engine, workers, ray_address, overwrite, quiet, max_pixels, image_keys, opts,
                  ray_resources=_ray_resources(actor_cpus, actor_gpus))


@app.command(epilog="Examples:\n\n"
             "    # Nguyen et al.: raw (top 30%) + synthetic (remaining 70%, filtered)\n\n"
             "    recaption mix shards/ -a ann/ -o mixed/ --strategy threshold --fraction 0.3 --filter-synthetic\n\n"
             "    recaption mix shards/ -a ann/ -o mixed/ --strategy sieve --fraction 0.2 --alpha 0.5\n\n"
             "    recaption mix shards/ -a ann/ --strategy raw --threshold 0.28 --dry-run")
def mix(
    input: InputArg,
    annotations: str = O(..., "--annotations", "-a", help="the annotation folder of this shard set"),
    out: Optional[str] = O(None, "--out", "-o", help="output shard folder (not needed with --dry-run)"),
    strategy: Strategy = O(Strategy.threshold, help="raw, synthetic, threshold, both or sieve (SPEC 4)"),
    threshold: Optional[float] = O(None, help="absolute score threshold"),
    fraction: Optional[float] = O(None, help="keep this fraction of the pool (sets the threshold, DataComp rule)"),
    filter_synthetic: bool = O(False, help="threshold: also drop samples whose synthetic caption scores below"),
    alpha: float = O(0.5, help="blend = (1-alpha)*norm(sieve) + alpha*norm(clip_raw)"),
    samples_per_shard: int = O(10000),
    keep_sharding: bool = O(False, help="one output shard per input shard, same names"),
    dry_run: bool = O(False, help="print what would be kept and written; write nothing"),
    overwrite: bool = O(False, help="replace another run's files in --out"),
    engine: EngineOpt = Engine.local, workers: Workers = None, ray_address: RayAddress = None,
    actor_cpus: ActorCpus = None, actor_gpus: ActorGpus = None, quiet: Quiet = False,
    image_keys: ImageKeys = "jpg,jpeg,png,webp",
):
    """Write a caption-mixed shard set from annotations; every sample is written or recorded as dropped."""
    from recaption import api
    from recaption.errors import RecaptionError
    from recaption.mixing.strategies import MixConfig

    if out is None and not dry_run:
        raise RecaptionError("give --out, or --dry-run to only see the numbers")
    cfg = MixConfig(strategy.value, threshold, fraction, filter_synthetic, alpha, samples_per_shard, keep_sharding)
    summary = api.mix(input, annotations, out, cfg, dry_run=dry_run, overwrite=overwrite,
                      image_keys=tuple(image_keys.split(",")), engine=engine.value, workers=workers,
                      ray_address=ray_address, quiet=quiet, arguments={"argv": sys.argv[1:]},
                      ray_resources=_ray_resources(actor_cpus, actor_gpus))
    _print({k: v for k, v in summary.items() if k != "arguments"},
           "dry run (nothing written)" if dry_run else f"mixed shards in {out}")
    _exit_for(summary)


@app.command(epilog="Examples:\n\n"
             "    recaption run sieve shards/ --out mixed/\n\n"
             "    recaption run nguyen-blip2 'shards/{00000..00127}.tar' -o mixed/ --set mix.fraction=0.4\n\n"
             "    recaption run my-recipe.yaml shards/ -o mixed/ --engine ray --ray-address auto")
def run(
    recipe: Annotated[str, typer.Argument(help="recipe name (see `recaption recipes`) or a YAML file")],
    input: InputArg,
    out: str = O(..., "--out", "-o", help="output folder: mixed shards, _summary.json, _dropped.parquet"),
    set: List[str] = O([], "--set", help="override a recipe field, e.g. mix.fraction=0.3 or caption.num_captions=4"),
    annotations: Optional[str] = O(None, "--annotations", "-a", help="annotation folder (default OUT/_annotations)"),
    device: Device = None, engine: EngineOpt = Engine.local, workers: Workers = None, ray_address: RayAddress = None,
    actor_cpus: ActorCpus = None, actor_gpus: ActorGpus = None, overwrite: Overwrite = False, quiet: Quiet = False,
    max_pixels: MaxPixels = None,
):
    """Caption, score and mix in one command. Re-run the same command to resume after a crash."""
    from recaption import api

    summary = api.run(recipe, input, out, sets=set, annotations=annotations, engine=engine.value,
                      workers=workers, device=device, ray_address=ray_address, overwrite=overwrite,
                      quiet=quiet, max_pixels=max_pixels, ray_resources=_ray_resources(actor_cpus, actor_gpus),
                      arguments={"argv": sys.argv[1:]})
    print_mix_summary(summary, out)
    _exit_for(summary)


def print_mix_summary(summary: dict, out: str | None):
    from rich.console import Console
    from rich.table import Table

    c = summary["counts"]
    t = Table(title=f"recaption: {summary['strategy']}", show_header=False)
    t.add_row("samples read", str(c["read"]))
    t.add_row("written", f"{c['written']} (raw {c['raw']}, synthetic {c['synthetic']})")
    t.add_row("dropped", str(c["dropped"]))
    for reason, n in sorted(c["dropped_by_reason"].items(), key=lambda x: -x[1]):
        t.add_row("  " + reason, str(n))
    t.add_row("errors", str(c["errors"]))
    thr = summary.get("threshold")
    t.add_row("threshold", "none" if thr is None else f"{thr:.4f} on {summary['threshold_column']}")
    for k, (lo, hi) in summary.get("min_max", {}).items():
        if lo is not None:
            t.add_row(f"{k} min / max", f"{lo:.4f} / {hi:.4f}")
    ann = summary.get("annotate") or {}
    if ann.get("samples_per_second"):
        t.add_row("annotate", f"{ann['samples']} samples, {ann['samples_per_second']} samples/s")
    Console().print(t)
    if out:
        print(f"output: {out}")


@app.command("import-captions", epilog="Examples:\n\n"
             "    recaption import-captions shards/ --captions blip2_captions.parquet -o ann/ --key-column uid\n\n"
             "    recaption import-captions shards/ --captions caps.csv -o ann/ --caption-column text --captioner blip2")
def import_captions(
    input: str = typer.Argument(...),
    captions: str = O(..., "--captions", help="CSV or parquet with a key column and a caption column"),
    out: str = O(..., "--out", "-o", help="annotation folder to write"),
    key_column: str = O("key", help="`key` (sample key) or a json field such as `uid` (DataComp)"),
    caption_column: str = O("caption", help="a string column (repeated keys add candidates) or a list column"),
    captioner: str = O("imported", help="what to record in the `captioner` column"),
    overwrite: bool = O(False),
    quiet: bool = O(False, "--quiet", "-q"),
):
    """Fill `captions` from captions made elsewhere, so they can be scored (`recaption score`) and mixed."""
    from recaption import api

    summary = api.import_captions(input, out, captions, key_column=key_column, caption_column=caption_column,
                                  captioner=captioner, overwrite=overwrite, quiet=quiet)
    _print(summary, f"annotations in {out}")
    _exit_for(summary)


@app.command(epilog="Examples:\n\n"
             "    recaption report mixed/ --out report/\n\n"
             "    recaption report ann/ --input shards/ --out report/ --fraction 0.2")
def report(
    path: str = typer.Argument(..., help="a mixed output folder (OUT) or an annotation folder (ANN)"),
    out: str = O(..., "--out", "-o", help="folder for index.html and its PNGs"),
    input: Optional[str] = O(None, "--input", "-i", help="shards, to show images for an annotation folder"),
    fraction: float = O(0.3, help="fraction used to draw thresholds and per-strategy splits"),
):
    """A static HTML page: score histograms with thresholds, caption lengths, per-strategy splits,
    and a grid of samples (highest, lowest, random) with their captions and scores."""
    from recaption.errors import require

    require("matplotlib", "report")
    from recaption.report.data import load
    from recaption.report.html import render

    page = render(load(path, input, fraction), out)
    print(f"report: {page}")


@app.command()
def recipes():
    """List the recipes shipped with recaption."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Column, Table

    from recaption.recipes import list_recipes

    t = Table(Column("recipe", no_wrap=True), "captioner", "mix", "description")
    for name, r in list_recipes().items():
        mix = r.get("mix") or {}
        t.add_row(name, str(r.get("captioner")), " ".join(f"{k}={v}" for k, v in mix.items()),
                  escape(r.get("description", "")))
    Console().print(t)


@app.command(epilog="Example:\n\n    recaption demo --out demo-out")
def demo(out: str = O("demo-out", "--out", "-o"), quiet: bool = O(False, "--quiet", "-q")):
    """Run the sieve recipe offline on the bundled sample shards, with tiny random-weight models."""
    from recaption.demo import run_demo

    summary = run_demo(out, quiet=quiet)
    print_mix_summary(summary, out)


@app.command()
def models():
    """List captioner presets (data files in recaption/captioners/presets)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Column, Table

    from recaption.captioners.base import list_presets

    t = Table(Column("preset", no_wrap=True), "backend", "model", "decoding", "description")
    for name, p in list_presets().items():
        dec = p.get("decoding", {})
        t.add_row(name, p["backend"], p["model"] + (f" ({p['quantize']})" if p.get("quantize") else ""),
                  " ".join(f"{k}={v}" for k, v in dec.items()), escape(p.get("description", "")))
    Console().print(t)


@app.callback()
def _main(debug: bool = O(False, "--debug", help="show tracebacks"),
          log_file: Optional[str] = O(None, help="also write the log to this file")):
    STATE["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(message)s")
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    if log_file:
        h = logging.FileHandler(log_file)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(h)


def main(argv: Optional[List[str]] = None):
    from recaption.errors import RecaptionError

    try:
        rc = app(args=argv, standalone_mode=False)  # click returns typer.Exit's code here, not raises
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except RecaptionError as e:
        print(f"recaption: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt,):
        print("recaption: interrupted; re-run the same command to resume", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        if STATE["debug"]:
            raise
        print(f"recaption: error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
