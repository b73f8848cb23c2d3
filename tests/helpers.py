"""What several test modules share: the CLI runner, random annotation builders, readers of
output folders and samples. Test modules import these from here, never from each other."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import numpy as np

from recaption.cli import main
from recaption.io import annotations as ann
from recaption.io.shards import iter_shard
from recaption.io.tarcopy import BlockWriter, RawMember
from recaption.io.writer import write_with
from recaption.scoring.blend import as_scores, kept_rank, scored
from tests.mixing import oracle


def read_output(out: Path) -> dict[str, object]:
    """key -> Sample for every sample in an output folder's shards."""
    got = {}
    for t in sorted(out.glob("*.tar")):
        for s in iter_shard(str(t)):
            assert s.key not in got, f"{s.key} written twice"
            got[s.key] = s
    return got


def rerecord_decisions(folder: Path) -> None:
    """Record the decisions files' digests as they are now in the folder's summary (what a test
    that edits a decisions file does to reach the checks behind the digest's)."""
    import hashlib

    p = folder / "_summary.json"
    s = json.loads(p.read_text())
    s["decisions"] = {n: hashlib.sha256((folder / "_decisions" / f"{n}.parquet").read_bytes()).hexdigest()
                      for n in s["decisions"]}
    p.write_text(json.dumps(s))


def dropped(out: Path) -> dict:
    t = pq.read_table(out / "_dropped.parquet").to_pylist()
    return {(r["key"], r["shard"]): r["reason"] for r in t}


def input_samples(shard_dir: Path) -> dict:
    return {s.key: s for t in sorted(shard_dir.glob("*.tar")) for s in iter_shard(str(t)) if hasattr(s, "members")}


def summary(out: Path) -> dict:
    return json.loads((out / "_summary.json").read_text())


def tree_bytes(out: Path) -> dict[str, bytes]:
    """Content of every shard and parquet file; stats files carry timings, so only their counts."""
    res = {}
    for p in sorted(out.iterdir()):
        if p.suffix == ".tar":
            res[p.name] = p.read_bytes()
        elif p.name.endswith("_stats.json"):
            res[p.name] = json.loads(p.read_text())["count"]
        elif p.suffix == ".parquet":
            res[p.name] = pq.read_table(p).to_pylist()
    return res


def cli(*args):
    """Run the `recaption` command line in this process; its exit status. Every mix or run that
    exits 0 is then re-checked by `recaption verify` (exit 0 means the folder agrees with its
    record and its inputs)."""
    argv = [str(a) for a in args]
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = written_folder(argv)
    if code == 0 and out is not None and VERIFY_AFTER:
        from recaption.api import verify

        st = argv[argv.index("--storage-options") + 1] if "--storage-options" in argv[:-1] else None
        problems = verify(out, storage_options=st)
        assert not problems, f"recaption verify {out} after {' '.join(argv)}:\n" + "\n".join(problems)
    return code


VERIFY_AFTER = True  # a test whose stages do not write (a probe in place of the engine) turns it off


def commands() -> dict:
    """Every verb as the command line builds it now (typer's own click commands, by name)."""
    import typer

    from recaption.cli import app
    from recaption.cli.options import refresh

    refresh()
    return dict(typer.main.get_command(app).commands)


def choices_of(param) -> list[str]:
    """The values a choice option takes (typer keeps its Enum on the parameter's type descriptor;
    `Optional[...]` and `List[...]` unwrapped); [] for any other option."""
    import enum
    import typing

    t = param.type_descriptor.annotation
    while typing.get_args(t) and not (isinstance(t, type) and issubclass(t, enum.Enum)):
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return [m.value for m in t] if isinstance(t, type) and issubclass(t, enum.Enum) else []


def written_folder(argv: list[str]) -> str | None:
    """The folder a mix or run command line writes (None for other verbs and dry runs)."""
    if not argv or argv[0] not in ("mix", "run") or "--dry-run" in argv or "--help" in argv:
        return None
    for flag in ("-o", "--out"):
        if flag in argv[:-1]:
            return argv[argv.index(flag) + 1]
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--out=")), None)


def annotate_randomly(shard_dir, ann_dir, seed=0):
    """Annotation files for real shards: their keys, random scores with ties, NaN and nulls."""
    ann_dir.mkdir(exist_ok=True)
    for t in sorted(shard_dir.glob("*.tar")):
        recs = list(iter_shard(str(t)))
        rows = oracle.random_rows(len(recs), seed=seed + int(t.stem), shard=t.stem)
        for r, rec in zip(rows, recs):
            r["key"], r["raw_caption"] = rec.key, getattr(rec, "raw_caption", None)
            if not hasattr(rec, "members"):
                r.update(status="error", error=rec.reason)
        ann.write(str(ann_dir / f"{t.stem}.parquet"), rows)
    return ann_dir


CAPTIONERS = {"00000": "Salesforce/blip-image-captioning-base", "00001": "/models/coca;ViT L", "00002": "imported"}


def annotate_by_captioners(shard_dir, ann_dir, captioners=CAPTIONERS, seed=0):
    """Random annotations whose shards were captioned by different captioners."""
    annotate_randomly(shard_dir, ann_dir, seed=seed)
    for name, who in captioners.items():
        path = ann_dir / f"{name}.parquet"
        t = pq.read_table(path)
        i = t.column_names.index("captioner")
        t = t.set_column(i, "captioner", pa.array([who] * len(t), pa.string()))
        pq.write_table(t, path)  # the schema metadata (the groups) stays
    return ann_dir


def urls(folder) -> list[str]:
    """The shards of a folder, sorted."""
    return sorted(str(p) for p in folder.glob("*.tar"))


def plain(s: dict) -> dict:
    """A sample without where it was read from, and without the members it lacks (None, or NaN
    where Ray's reader keeps a column of some samples' members as Python objects)."""
    return {k: v for k, v in s.items() if k not in ("__url__", "__local_path__") and v is not None and v == v}


# -- real photographs and their near-copies (the duplicate and overlap tests) -------------------
PHOTOS = sorted((Path(__file__).parent / "data" / "photos").glob("*.jpg"))
COPIES = ("bytes", "q60", "half", "mirror", "crop5")  # per photograph, in the copies shard


def jpeg(im, quality: int = 90) -> bytes:
    """A PIL image as JPEG bytes."""
    import io

    b = io.BytesIO()
    im.save(b, "JPEG", quality=quality)
    return b.getvalue()


def near_copies(data: bytes) -> dict[str, bytes]:
    """A photograph's copies, as a pool would hold them: the same bytes, re-encoded at JPEG quality
    60, half size, mirrored, cropped by 5% (the centre 95% of width and height)."""
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    cw, ch = round(w * 0.95), round(h * 0.95)
    left, top = (w - cw) // 2, (h - ch) // 2
    return {"bytes": data, "q60": jpeg(im, 60), "half": jpeg(im.resize((w // 2, h // 2), Image.Resampling.BICUBIC)),
            "mirror": jpeg(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
            "crop5": jpeg(im.crop((left, top, left + cw, top + ch)))}


def _photo_sample(key: str, image: bytes | None, text: str) -> tuple[str, dict]:
    members = {"jpg": image} if image is not None else {}
    return key, {**members, "txt": text.encode(), "json": json.dumps({"key": key}).encode()}


def photo_shards(folder: Path) -> Path:
    """Two shards: 00000 holds the five photographs (`orig-NAME`), an image that does not decode
    (`broken`) and a sample without image (`noimage`); 00001 holds every photograph's copies
    (`NAME-bytes`, `NAME-q60`, `NAME-half`, `NAME-mirror`, `NAME-crop5`). Each photograph is a
    different photograph to the others'."""
    from recaption.demo.samples import write_tar

    originals = [_photo_sample(f"orig-{p.stem}", p.read_bytes(), f"a photograph of {p.stem}") for p in PHOTOS]
    write_tar(folder / "00000.tar", originals + [_photo_sample("broken", b"not an image at all", "broken"),
                                                 _photo_sample("noimage", None, "no image")])
    copies = [_photo_sample(f"{p.stem}-{kind}", data, f"{kind} of {p.stem}")
              for p in PHOTOS for kind, data in near_copies(p.read_bytes()).items()]
    write_tar(folder / "00001.tar", copies)
    return folder


def accounted(out: Path, shards: Path) -> tuple[set, dict]:
    """(keys written, {key: reason} dropped) of a mix folder, checked to hold every input sample
    exactly once."""
    written = set(read_output(out))
    drops = {k: r for (k, _), r in dropped(out).items()}
    inputs = {s.key for t in sorted(shards.glob("*.tar")) for s in iter_shard(str(t)) if s.key is not None}
    assert not written & set(drops), written & set(drops)
    assert written | set(drops) == inputs, inputs ^ (written | set(drops))
    return written, drops


def dead_pid() -> int:
    """A process id no process has on this host: one above the kernel's largest."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    except OSError:
        return 2**22 + 1  # Linux's ceiling for pid_max


def find_chromium():
    """A headless Chromium for the report tests, installed with apt where it is missing and allowed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() == 0 and shutil.which("apt-get"):  # the test set-up installs it where missing
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=600, check=False, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, timeout=900, check=False,
                           capture_output=True)
        except subprocess.TimeoutExpired:
            return None
        return shutil.which("chromium")
    return None


def render_dom(chromium: str, page: Path, profile: Path):
    """Headless Chromium's DOM of a local page after its scripts ran (the flags this closed
    network needs: no background networking, no component updates, no sync)."""
    import subprocess

    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={profile}", "--allow-file-access-from-files",
                           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)


def write_shard(out_dir: str, name: str, samples, extra_stats: dict | None = None) -> dict:
    """An output shard written from (key, members in order, parquet row) triples: members are
    field -> bytes, (field, bytes) pairs, raw tar blocks or `RawMember`s. The reference writers of
    the tests (the writer as it was before the member index) write through it."""
    def fill(tar: BlockWriter) -> pa.Table:
        rows: list[dict] = []
        for key, members, row in samples:
            for m in (members.items() if isinstance(members, dict) else members):
                if isinstance(m, tuple):
                    tar.add(f"{key}.{m[0]}", m[1])
                elif isinstance(m, RawMember):
                    tar.member(m)
                else:
                    tar.raw(m)
            rows.append(row)
        return pa.Table.from_pylist(rows) if rows else pa.table({"key": pa.array([], pa.string())})

    return write_with(out_dir, name, fill, extra_stats)


def fraction_threshold(scores, fraction: float) -> float | None:
    """DataComp's get_threshold over an in-memory list, the reference the radix select is held to:
    n = int(N * fraction), the n-th highest (0-based); keep >= it. Fraction 1 keeps every scored
    sample. None when nothing is scored."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within [0, 1], got {fraction}")
    a = as_scores(scores)
    a = a[scored(a)]
    if not a.size:
        return None
    r = kept_rank(a.size, fraction)
    return float(np.partition(a, r)[r])


def strategy_names() -> list[str]:
    """The registered strategies, from the registry (never a hand-written list)."""
    from recaption.mixing import STRATEGIES

    return STRATEGIES.names()


def variant_names() -> list[str]:
    """The rows of the side-by-side view, from the registry: each strategy with each of its variants."""
    from recaption.mixing.compare import variant_name, variants

    return [variant_name(s, bool(v.get("filter_synthetic"))) for s, v in variants()]


def config_for(strategy: str, fraction: float = 0.6, **kw):
    """A MixConfig a registered strategy runs with: a fraction where it needs a threshold."""
    from recaption.mixing.strategies import MixConfig
    from recaption.mixing.strategies.base import named

    return MixConfig(strategy, fraction=fraction if named(strategy).needs_threshold else None, **kw)


def tiny_tag_heads(folder: Path) -> dict[str, str]:
    """LAION's tag heads at their published architectures with random weights, over a tiny CLIP
    768 wide: declaration files (NAME.yaml, weights beside) for punsafe and aesthetic (v1 and v2),
    and the watermark net's weights. Returns {"clip", "punsafe", "aesthetic", "aesthetic_v1", "pwatermark"}."""
    import torch
    import yaml

    from recaption.demo.tiny_models import build_clip
    from recaption.scoring import heads
    from recaption.scoring.heads import arch

    folder.mkdir(parents=True, exist_ok=True)
    out = {"clip": build_clip(folder / "clip", embed_dim=768)}
    published = yaml.safe_load((heads.HERE / "heads.yaml").read_text())
    for key, base in (("punsafe", "laion-nsfw-vit-l-14"), ("aesthetic", "laion-aesthetic-v2-vit-l-14"),
                      ("aesthetic_v1", "laion-aesthetic-v1-vit-l-14")):
        torch.manual_seed(1)
        torch.save(arch.build(heads.get(base)).state_dict(), folder / heads.get(base).weights)
        d = published[base] | {"clip": {"model": out["clip"], "pretrained": None}}
        (folder / f"{key}.yaml").write_text(yaml.safe_dump({"name": f"tiny-{key}", **d}))
        out[key] = str(folder / f"{key}.yaml")
    torch.manual_seed(2)
    torch.save(arch.build(heads.get("laion-watermark-v1")).state_dict(), folder / "wm.pt")
    out["pwatermark"] = str(folder / "wm.pt")
    return out


def repeat_a_kept_row(ann_file) -> str:
    """Append a second copy of the first ok row with a raw caption (a row `raw` keeps), so its key
    is kept in two annotation rows; returns that key."""
    t = pq.read_table(ann_file)
    i = next(i for i, r in enumerate(t.to_pylist()) if r["status"] == "ok" and r["raw_caption"])
    pq.write_table(pa.concat_tables([t, t.slice(i, 1)]), ann_file)
    return t.column("key")[i].as_py()


def add_caption_group(ann_dir: Path, group: str, candidates, seed: int = 0) -> None:
    """Give every annotation file of `ann_dir` a named caption group as `annotate --group` records
    it (captions, captioner, CLIP and SIEVE columns `COLUMN__NAME`, its groups in the footer):
    `candidates(i)` candidates in row i (0: none, as a fused group's row not sent has), each with
    a random CLIP score, and a SIEVE score where it has one."""
    import random

    for path in sorted(Path(ann_dir).glob("*.parquet")):
        t = pq.read_table(path)
        meta = ann.metadata(t)
        rng = random.Random(f"{seed}/{group}/{path.stem}")
        ks = [candidates(i) for i in range(t.num_rows)]
        caps = [[f"{group} {path.stem}.{i}.{j}" for j in range(k)] for i, k in enumerate(ks)]
        cols = {f"captions__{group}": pa.array(caps, pa.list_(pa.string())),
                f"captioner__{group}": pa.array([f"tiny-{group}"] * t.num_rows, pa.string()),
                f"clip_captions__{group}": pa.array([[rng.uniform(0.1, 0.4) for _ in range(k)] for k in ks],
                                                    pa.list_(pa.float32())),
                f"sieve__{group}": pa.array([rng.random() if k else None for k in ks], pa.float32())}
        for name, col in cols.items():
            t = t.append_column(name, col)
        for family in ("captions", "clip", "sieve"):
            meta["groups"][f"{family}.{group}"] = {"model": f"tiny-{group}"}
        pq.write_table(t.replace_schema_metadata({ann.META_KEY: json.dumps(meta).encode()}), path)
