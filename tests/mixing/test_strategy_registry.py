"""A strategy is one class and one registration: a toy strategy registered here, and nowhere else,
flows through the dry run's counts, the side-by-side view, a written mix and an overlay read."""
import numpy as np
import pytest
import webdataset as wds

from recaption import api
from recaption.engines import Execution
from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.io.shards import iter_shard
from recaption.mixing import register_strategy, strategies_help, unregister_strategy
from recaption.mixing.strategies import MixConfig
from recaption.mixing.strategies.base import Rows, Strategy
from recaption.scoring.blend import scored
from recaption.webdataset import overlay
from tests.helpers import dropped, read_output, summary
from tests.mixing import oracle

QUIET = Execution(quiet=True)


class Best(Strategy):
    """Whichever caption CLIP scores higher: the alt-text on ties and where the synthetic one is
    unscored; a sample with neither caption is dropped. The synthetic caption also goes to
    candidate.txt."""

    needs_synthetic = True
    extra_members = {"candidate.txt": "synthetic_caption"}
    reasons = {"no_caption": "mix: no caption at all"}

    def decide(self, rows: Rows) -> None:
        c = rows.cols
        has, clip_syn = rows.synthetic()
        with np.errstate(invalid="ignore"):
            raw_wins = c.has_raw & (~scored(clip_syn) | (scored(c.clip_raw) & (c.clip_raw >= clip_syn)))
        rows.cut(~c.has_raw & ~has, "no_caption")
        rows.use_synthetic(has & ~raw_wins)


def best(row) -> tuple[str, str | None]:
    """The toy's rule in plain Python: ('raw' | 'synthetic' | 'drop', the caption or reason)."""
    if row["key"] is None or row["status"] != "ok":
        return "drop", "error"
    raw = row["raw_caption"]
    clip = row["clip_raw"] if raw is not None else None
    syn, cs = oracle.synthetic(row)
    if raw is None and syn is None:
        return "drop", "mix: no caption at all"
    if syn is not None and (raw is None or (oracle.scored(cs) and not (oracle.scored(clip) and clip >= cs))):
        return "synthetic", syn
    return "raw", raw


@pytest.fixture(scope="module")
def registered():
    register_strategy("best", Best, "whichever caption CLIP scores higher")  # the one registration
    yield
    unregister_strategy("best")


@pytest.fixture(scope="module")
def annotations(shard_dir, tmp_path_factory):
    """Random annotation rows for the real shards' keys; each shard's first rows forced into every case."""
    d = tmp_path_factory.mktemp("best") / "ann"
    d.mkdir()
    forced = [{"raw_caption": None, "captions": [], "clip_captions": []},  # no caption at all
              {"raw_caption": None, "captions": ["only syn"], "clip_captions": [None]},  # synthetic, unscored
              {"raw_caption": "alt", "clip_raw": 0.2, "captions": ["hi", "lo"], "clip_captions": [0.3, 0.1]},
              {"raw_caption": "alt", "clip_raw": 0.3, "captions": ["tie"], "clip_captions": [0.3]}]
    for t in sorted(shard_dir.glob("*.tar")):
        recs = list(iter_shard(str(t)))
        rows = oracle.random_rows(len(recs), seed=7 + int(t.stem), shard=t.stem)
        for i, (r, rec) in enumerate(zip(rows, recs)):
            r.update(forced[i] if i < len(forced) else {}, key=rec.key)
            if not hasattr(rec, "members"):
                r.update(status="error", error=rec.reason)
        ann.write(str(d / f"{t.stem}.parquet"), rows)
    return d


def expected(shard_dir, ann_dir) -> dict:
    """(key, shard) -> (outcome, caption or reason) for every annotated sample, by the plain rule."""
    return {(r["key"], t.stem): best(r) for t in sorted(shard_dir.glob("*.tar"))
            for r in ann.read_rows(str(ann_dir / f"{t.stem}.parquet"))}


def test_a_registered_strategy_flows_through_mix(registered, shard_dir, annotations, tmp_path):
    want = expected(shard_dir, annotations)
    n = {k: sum(1 for o, _ in want.values() if o == k) for k in ("raw", "synthetic")}
    no_caption = sum(1 for o, x in want.values() if x == "mix: no caption at all")
    assert min(n["raw"], n["synthetic"], no_caption) > 0  # every outcome of the toy occurs
    assert "best: whichever caption CLIP scores higher" in strategies_help()  # --help's line

    dry = api.mix(str(shard_dir), str(annotations), None, MixConfig("best"), dry_run=True, execution=QUIET)
    c = dry["counts"]
    assert (c["raw"], c["synthetic"], c["dropped_by_reason"]["mix: no caption at all"]) == \
        (n["raw"], n["synthetic"], no_caption)
    assert dry["threshold_column"] == "clip_raw"
    side = {r["strategy"]: r for r in dry["strategies"]}
    assert list(side)[-1] == "best"  # after the built-in strategies, in registration order
    assert (side["best"]["raw"], side["best"]["synthetic"], side["best"]["cut"]) == \
        (n["raw"], n["synthetic"], {"mix: no caption at all": no_caption})

    out = tmp_path / "out"
    api.mix(str(shard_dir), str(annotations), str(out), MixConfig("best", samples_per_shard=5), execution=QUIET)
    got, drops = read_output(out), dropped(out)
    assert summary(out)["strategy"] == "best" and len(got) == n["raw"] + n["synthetic"]
    checked = 0
    for (key, shard), (outcome, x) in want.items():
        if outcome == "drop":
            if x != "error":
                assert drops[(key, shard)] == x
            continue
        s = got[key]
        assert s.members["txt"].decode() == x and s.meta["recaption"]["caption_source"] == outcome
        assert s.meta["recaption"]["strategy"] == "best"
        syn = s.meta["recaption"]["synthetic_caption"]
        assert s.members.get("candidate.txt") == (None if syn is None else syn.encode())
        checked += 1
    assert checked == len(got)

    # an overlay of the same mix gives the written samples, the extra member included
    ov = tmp_path / "overlay"
    api.mix(str(shard_dir), str(annotations), str(ov), MixConfig("best"), overlay=True, execution=QUIET)
    urls = sorted(str(p) for p in shard_dir.glob("*.tar"))
    read = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False).compose(overlay(str(ov)))}
    assert set(read) == set(got)
    for key, s in read.items():
        assert {k: v for k, v in s.items() if not k.startswith("__")} == got[key].members


def test_a_strategy_declaring_what_mix_cannot_do_is_refused_in_one_line():
    class Odd(Strategy):
        """Cuts on a column the pool pass has not got."""
        column = "aesthetics"

    register_strategy("odd", Odd, "a bad declaration")
    try:
        with pytest.raises(RecaptionError, match="strategy 'odd' declares column 'aesthetics'"):
            MixConfig("odd").validate()
    finally:
        unregister_strategy("odd")
    assert MixConfig("raw").validate().threshold_column == "clip_raw"  # the others load again
    with pytest.raises(RecaptionError, match="--filter-synthetic only applies to --strategy threshold"):
        MixConfig("both", filter_synthetic=True).validate()
    with pytest.raises(RecaptionError, match="registered already"):
        register_strategy("raw", Odd, "another raw")
