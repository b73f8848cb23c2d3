"""Which kind of folder a path is (annotations, a mix's output, a run's output), where its
annotation files are, and the mix settings it was written with: what the report and eval's
strategy comparison start from."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from recaption.errors import RecaptionError
from recaption.io.folders import read_record
from recaption.mixing.plan import FOLDER as DECISIONS
from recaption.mixing.strategies import MixConfig


@dataclass
class Folder:
    """A folder recaption wrote, resolved: its kind, its annotations, and its mix settings."""
    path: Path
    kind: str  # annotations | mix | run
    ann_dir: Path
    names: list[str]  # the shards whose annotation files the folder's pool is made of
    summary: dict | None = None
    cfg: MixConfig | None = None  # the mix that wrote an output folder
    input: str | None = None  # the input shards, where known and reachable
    notes: list[str] = field(default_factory=list)

    @property
    def output(self) -> bool:
        """A mix's or a run's output folder (it has mixed shards and decisions)."""
        return self.kind in ("mix", "run")


def resolve(path: str | Path, annotations: str | None = None, input_spec: str | None = None) -> Folder:
    """The folder at `path`; `annotations` overrides where its annotation files are. One line
    naming the folder when it is none of the kinds recaption writes."""
    p = Path(path)
    if not p.exists():
        raise RecaptionError(f"{p} not found")
    if not p.is_dir():
        raise RecaptionError(f"{p} is not a folder of annotations or mixed shards")
    rec = read_record(str(p)) or {}
    summary = _json(p / "_summary.json")
    kind = rec.get("kind") or ("run" if (p / "_annotations").is_dir() else "mix" if summary else "annotations")
    ident = rec.get("identity") or {}
    if kind == "annotations":
        ann_dir = Path(annotations) if annotations else p
    elif kind == "run":
        ann_dir = Path(annotations or ident.get("annotations") or p / "_annotations")
    else:
        ann_dir = Path(annotations or ident.get("annotations") or (summary or {}).get("annotations") or "")
    ann_dir = _found(ann_dir, p, annotations is not None)
    names = _names(p, ann_dir, kind)
    f = Folder(p, kind, ann_dir, names, summary)
    if kind != "annotations":
        f.cfg = _mix_config(summary or {}, ident)
    f.input = input_spec or _input(p, summary)
    return f


def _json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except ValueError:
        raise RecaptionError(f"{p} is not valid JSON") from None


def _found(ann_dir: Path, folder: Path, given: bool) -> Path:
    """A recorded annotation path, as given when it was written (relative to where the command ran):
    as it is, else beside the folder (the usual `mix shards -a ann -o out` in one place)."""
    if not str(ann_dir):
        raise RecaptionError(f"{folder} does not say where its annotations are; give --annotations")
    for cand in ([ann_dir] if given or ann_dir.is_absolute() else [ann_dir, folder.parent / ann_dir]):
        if cand.is_dir():
            return cand
    raise RecaptionError(f"the annotations of {folder} ({ann_dir}) are not found from here; give --annotations")


def _names(p: Path, ann_dir: Path, kind: str) -> list[str]:
    if kind != "annotations" and (p / DECISIONS).is_dir():  # exactly the shards this mix decided
        names = sorted(f.stem for f in (p / DECISIONS).glob("*.parquet"))
    else:
        names = sorted(f.stem for f in ann_dir.glob("*.parquet") if not f.name.startswith((".", "_")))
    names = [n for n in names if (ann_dir / f"{n}.parquet").is_file()]
    if not names or "status" not in _schema_names(ann_dir / f"{names[0]}.parquet"):
        raise RecaptionError(f"{ann_dir} holds no recaption annotation files (NAME.parquet, docs/formats.md)")
    return names


def _schema_names(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path).names
    except Exception:  # not a parquet file: not an annotation file either
        return []


def _mix_config(summary: dict, ident: dict) -> MixConfig:
    """The settings of the mix that wrote an output folder (its record, else its summary)."""
    mix = dict(ident.get("mix") or (ident.get("recipe") or {}).get("mix") or {})
    if not mix:
        mix = {k: summary.get(k) for k in ("strategy", "fraction", "alpha", "filter_synthetic")
               if summary.get(k) is not None}
        if mix.get("fraction") is None and summary.get("threshold") is not None:
            mix["threshold"] = summary["threshold"]
    filters = mix.pop("filters", None) or (ident.get("recipe") or {}).get("filters") or \
        [r["rule"] for r in summary.get("filters") or []]
    if ident.get("recipe"):  # a run's duplicate and overlap rules are recipe sections
        from recaption.dedup.options import from_recipe

        mix.update(from_recipe(ident["recipe"]))
    known = {f for f in MixConfig.__dataclass_fields__}
    return MixConfig(**{k: v for k, v in mix.items() if k in known}, filters=filters).validate()


def _input(p: Path, summary: dict | None) -> str | None:
    """The input shards a summary names, where they can be reached from here."""
    spec = (summary or {}).get("input")
    if not spec or isinstance(spec, list):
        return None
    if "://" in spec or os.path.exists(spec) or any(ch in spec for ch in "*{"):
        return spec
    beside = p.parent / spec
    return str(beside) if beside.exists() else None

