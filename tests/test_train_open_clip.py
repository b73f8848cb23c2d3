"""open_clip's own trainer (`open_clip_train`, the released open-clip-torch with its training extra)
trains on what recaption writes, for a couple of steps on CPU with a tiny model: a mixed shard set
as it is (`--dataset-type webdataset`), and the input shards read through an overlay by
`python -m recaption.train_open_clip`, with txt drawn among the caption keys each epoch. Training
starts, reads every kept sample once an epoch (and no dropped one), and finishes without error."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds

from recaption import api
from recaption.engines import Execution
from recaption.mixing.strategies import MixConfig
from recaption.webdataset import overlay
from tests.helpers import annotate_by_captioners

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
QUIET = Execution(quiet=True)
CFG = MixConfig("threshold", fraction=0.3, samples_per_shard=4, caption_keys="all")  # keeps 18 of 24
KEYS = "recaption_raw;recaption_synthetic;recaption_candidate_0"


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Input shards, their annotations, a tiny open_clip model, a mixed set and an overlay of one mix."""
    pytest.importorskip("open_clip_train")
    from recaption.demo.samples import make_shards
    from recaption.demo.tiny_models import build_clip

    root = tmp_path_factory.mktemp("train")
    make_shards(root / "shards", n_shards=3, per_shard=8, seed=4)
    ann = annotate_by_captioners(root / "shards", root / "ann", seed=2)
    api.mix(str(root / "shards"), str(ann), str(root / "mixed"), CFG, execution=QUIET)
    api.mix(str(root / "shards"), str(ann), str(root / "overlay"), CFG, overlay=True, execution=QUIET)
    return root, build_clip(root / "clip")


def brace(folder: Path) -> str:
    names = sorted(p.stem for p in folder.glob("*.tar"))
    return str(folder / f"{{{names[0]}..{names[-1]}}}.tar")


def train(root: Path, model: str, name: str, module: str, data: str, n: int, *extra, epochs: int = 1) -> list[dict]:
    """Run MODULE's entry point through the probe for `epochs`; what its training samples were, in order."""
    batch = max(d for d in range(1, n // 2 + 1) if n % d == 0)  # at least two steps, no partial batch
    assert batch >= 2, f"{n} samples: choose a mix that keeps a number with a divisor"  # a contrastive loss needs pairs
    seen = root / f"{name}.jsonl"
    cmd = [sys.executable, str(ROOT / "tests" / "trainer_probe.py"), str(seen), module, *extra,
           "--train-data", data, "--train-num-samples", str(n), "--dataset-type", "webdataset",
           "--model", model, "--epochs", str(epochs), "--batch-size", str(batch), "--workers", "1", "--device", "cpu",
           "--precision", "fp32",
           "--lr", "1e-4", "--warmup", "1", "--seed", "0", "--logs", str(root / "logs"), "--name", name,
           "--log-every-n-steps", "1"]
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert "Start epoch 0" in log and f"Train Epoch: {epochs - 1} [{n}/{n} (100%)]" in log, log[-4000:]
    assert (root / "logs" / name / "checkpoints" / f"epoch_{epochs}.pt").is_file()  # finished: saved its last epoch
    assert f"Train Epoch: {epochs} " not in log
    return [json.loads(line) for line in seen.read_text().splitlines()]


def test_the_released_trainer_reads_a_mixed_set(pool):
    root, model = pool
    mixed = {s["__key__"]: s["txt"].decode() for s in wds.WebDataset(sorted(map(str, (root / "mixed").glob("*.tar"))),
                                                                     shardshuffle=False)}
    assert len(mixed) >= 6
    seen = train(root, model, "mixed", "open_clip_train.main", brace(root / "mixed"), len(mixed))
    assert sorted(r["key"] for r in seen) == sorted(mixed)  # every sample, once
    assert {r["key"]: r["txt"] for r in seen} == mixed  # with the caption the mix wrote in txt


def test_the_trainer_reads_input_shards_through_an_overlay(pool):
    root, model = pool
    ov = root / "overlay"
    n = json.loads((ov / "_summary.json").read_text())["counts"]["written"]
    shards = sorted(str(p) for p in (root / "shards").glob("*.tar"))

    def through(epoch):  # what the library's own stage gives, read in order
        stage = overlay(str(ov), captions=KEYS, caption_probs=[1, 1, 1], seed=3, epoch=epoch)
        return {s["__key__"]: s["txt"].decode() for s in wds.WebDataset(shards, shardshuffle=False).compose(stage)}

    seen = train(root, model, "overlay", "recaption.train_open_clip", brace(root / "shards"), n, "--overlay", str(ov),
                 "--overlay-text-key", KEYS, "--overlay-text-key-probs", "1", "1", "1",
                 "--overlay-seed", "3", epochs=2)
    assert len(seen) == 2 * n
    want = [through(0), through(1)]
    assert want[0] != want[1] and set(want[0]) == set(want[1])
    for e in range(2):
        epoch = seen[e * n:(e + 1) * n]
        assert sorted(r["key"] for r in epoch) == sorted(want[e])  # every kept sample, once an epoch
        assert {r["key"]: r["txt"] for r in epoch} == want[e]  # txt drawn for this epoch, as the stage draws it
        assert all(r["url"] in shards for r in epoch)  # read from the input shards, not a copy


def _add_groups(ann_dir: Path) -> None:
    """Give every annotation file a short and a long caption group (DreamLIP's shape), as
    `annotate --group` records them: columns COLUMN__NAME and the groups in the footer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recaption.io import annotations as ann

    for path in sorted(ann_dir.glob("*.parquet")):
        t = pq.read_table(path)
        meta = ann.metadata(t)
        n = t.num_rows
        for g, words in (("short", 3), ("long", 30)):
            caps = [[f"{g} {i} " + " ".join(["word"] * words)] for i in range(n)]
            t = t.append_column(f"captions__{g}", pa.array(caps, pa.list_(pa.string())))
            t = t.append_column(f"captioner__{g}", pa.array([f"tiny-{g}"] * n, pa.string()))
            t = t.append_column(f"clip_captions__{g}", pa.array([[0.3]] * n, pa.list_(pa.float32())))
            meta["groups"][f"captions.{g}"] = {"model": f"tiny-{g}"}
            meta["groups"][f"clip.{g}"] = {"model": "clip"}
        pq.write_table(t.replace_schema_metadata({ann.META_KEY: json.dumps(meta).encode()}), path)


def test_the_trainer_samples_raw_short_and_long_caption_groups(pool, tmp_path):
    """Issue 35: every group's best under its own key, and the trainer drawing among raw, short and
    long as DreamLIP samples them (through the overlay: the released trainer reads txt only)."""
    root, model = pool
    ann_dir = tmp_path / "ann"
    import shutil

    shutil.copytree(root / "ann", ann_dir)
    _add_groups(ann_dir)
    ov = tmp_path / "overlay"
    cfg = MixConfig("raw", fraction=0.4, samples_per_shard=4, caption_keys="best", synthetic_group="long")
    api.mix(str(root / "shards"), str(ann_dir), str(ov), cfg, overlay=True, execution=QUIET)
    n = json.loads((ov / "_summary.json").read_text())["counts"]["written"]
    keys = "recaption_raw;recaption_group_short;recaption_group_long"
    seen = train(tmp_path, model, "groups", "recaption.train_open_clip", brace(root / "shards"), n,
                 "--overlay", str(ov), "--overlay-text-key", keys, "--overlay-text-key-probs", "1", "1", "1",
                 "--overlay-seed", "5")
    assert len(seen) == n
    kinds = {("raw" if not r["txt"].startswith(("short ", "long ")) else r["txt"].split()[0]) for r in seen}
    assert kinds == {"raw", "short", "long"}  # each group drawn for some sample
    shards = sorted(str(p) for p in (root / "shards").glob("*.tar"))
    stage = overlay(str(ov), captions=keys, caption_probs=[1, 1, 1], seed=5, epoch=0)
    want = {s["__key__"]: s["txt"].decode() for s in wds.WebDataset(shards, shardshuffle=False).compose(stage)}
    assert {r["key"]: r["txt"] for r in seen} == want


def _add_long_sentences(ann_dir: Path) -> None:
    """Make the long group's caption three sentences past the CLIP context, as the `length` group
    records it (its token counts and the context)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recaption.io import annotations as ann

    def put(t, name, values, typ):
        col = pa.array(values, typ)
        return t.set_column(t.column_names.index(name), name, col) if name in t.column_names else t.append_column(
            name, col)

    for path in sorted(ann_dir.glob("*.parquet")):
        t = pq.read_table(path)
        meta = ann.metadata(t)
        n = t.num_rows
        caps = [[f"long {i} first part. long {i} second part! long {i} third part."] for i in range(n)]
        t = put(t, "captions__long", caps, pa.list_(pa.string()))
        t = put(t, "clip_context", [77] * n, pa.int32())
        t = put(t, "clip_captions_tokens", [[5] * len(c or []) for c in t["captions"].to_pylist()],
                pa.list_(pa.int32()))
        t = put(t, "clip_captions_tokens__long", [[90]] * n, pa.list_(pa.int32()))
        t = put(t, "clip_captions_tokens__short", [[5]] * n, pa.list_(pa.int32()))  # within it: no sentence keys
        for g in ("length", "length.long", "length.short"):
            meta["groups"][g] = {"model": "clip"}
        pq.write_table(t.replace_schema_metadata({ann.META_KEY: json.dumps(meta).encode()}), path)


def test_the_trainer_samples_the_sentences_of_long_captions(pool, tmp_path):
    """Issue 36 item 4: a long caption's sentences under keys of their own (--caption-keys
    sentences), and the trainer drawing one sentence a sample through the overlay."""
    root, model = pool
    ann_dir = tmp_path / "ann"
    import shutil

    shutil.copytree(root / "ann", ann_dir)
    _add_groups(ann_dir)
    _add_long_sentences(ann_dir)
    ov = tmp_path / "overlay"
    cfg = MixConfig("raw", fraction=0.4, samples_per_shard=4, caption_keys="sentences", synthetic_group="long")
    api.mix(str(root / "shards"), str(ann_dir), str(ov), cfg, overlay=True, execution=QUIET)
    n = json.loads((ov / "_summary.json").read_text())["counts"]["written"]
    keys = ";".join(f"recaption_group_long_sentence_{i}" for i in range(3))
    seen = train(tmp_path, model, "sentences", "recaption.train_open_clip", brace(root / "shards"), n,
                 "--overlay", str(ov), "--overlay-text-key", keys, "--overlay-text-key-probs", "1", "1", "1",
                 "--overlay-seed", "7")
    assert len(seen) == n
    parts = {r["txt"].split()[2] for r in seen}
    assert parts == {"first", "second", "third"}  # one sentence a sample, each drawn for some
    for r in seen:
        i = r["txt"].split()[1]
        assert r["txt"] in (f"long {i} first part.", f"long {i} second part!", f"long {i} third part.")
