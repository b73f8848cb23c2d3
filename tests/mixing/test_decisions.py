"""The columnar decisions, row by row, against the mixing rules written out in plain Python (oracle.py),
over random rows with ties, missing and NaN scores, partly scored candidates and error rows."""
import json

import numpy as np
import pyarrow as pa
import pytest

from recaption.io.annotations import SCHEMA
from recaption.mixing.columns import from_table, synthetic_text
from recaption.mixing.strategies import (CATEGORIES, ERROR, KEEP_RAW, KEEP_SYN, SHARD_ERROR, MixConfig, PoolNumbers,
                                         decide, decide_columns, synthetic_of)
from recaption.scoring.blend import MinMax, json_float
from tests.mixing import oracle


def table(rows):
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def outcome(code: int) -> tuple[str, str | None]:
    if code == KEEP_RAW:
        return "raw", None
    if code == KEEP_SYN:
        return "synthetic", None
    if code == SHARD_ERROR:
        return "drop", "shard error"
    if code == ERROR:
        return "drop", "error"
    return "drop", CATEGORIES[code]


@pytest.mark.parametrize("cfg", oracle.CONFIGS, ids=lambda c: f"{c.strategy}-{c.threshold}-{c.fraction}-"
                                                          f"{c.filter_synthetic}-{c.alpha}")
def test_every_row_as_the_spec_says(cfg):
    rows = oracle.random_rows(3000, seed=11, shard_error=True)
    # the files hold float32: the oracle sees the same values
    rows = table(rows).to_pylist()
    want, t, (mm_s, mm_c) = oracle.expected(rows, cfg)
    c = from_table(table(rows))
    numbers = PoolNumbers(MinMax(*mm_s), MinMax(*mm_c), t)
    got = decide_columns(c, cfg, numbers)
    assert [outcome(int(x)) for x in got.code] == want
    assert len(set(want)) >= 4  # the rows exercise several outcomes of every strategy


def test_synthetic_caption_is_the_best_scored_candidate():
    rows = table(oracle.random_rows(2000, seed=4)).to_pylist()
    c = from_table(table(rows))
    text = synthetic_text(table(rows)["captions"], c.syn_idx).to_pylist()
    for r, i, s, tx in zip(rows, c.syn_idx, c.clip_syn, text):
        want_text, want_score = oracle.synthetic(r)
        assert tx == want_text
        assert (None if i < 0 else r["captions"][i]) == want_text
        assert json_float(s) == want_score


def test_nan_is_missing_in_every_cut():
    nan = float("nan")
    pool = PoolNumbers(MinMax(0.0, 1.0), MinMax(0.0, 0.5), 0.2)
    base = {"key": "a", "raw_caption": "alt", "captions": ["s1", "s2"], "clip_captions": [0.3, 0.1],
            "sieve": 0.5, "clip_raw": 0.3, "status": "ok", "captioner": "m"}
    # a NaN score is no score: it is cut, never kept because `NaN < t` is False
    d = decide(base | {"clip_raw": nan}, MixConfig("raw", threshold=0.2), pool)
    assert not d.keep and d.reason == "mix: no clip_raw score"
    d = decide(base | {"clip_captions": [nan, nan]}, MixConfig("synthetic", threshold=0.2), pool)
    assert not d.keep and "no CLIP score" in d.reason and d.synthetic == "s1"
    d = decide(base | {"clip_raw": nan, "clip_captions": [nan, 0.1]},
               MixConfig("threshold", threshold=0.2, filter_synthetic=True), pool)
    assert not d.keep and "both below" in d.reason and d.synthetic == "s2"
    d = decide(base | {"sieve": nan}, MixConfig("sieve", threshold=0.1), pool)
    assert not d.keep and "no blend" in d.reason and d.blend is None
    d = decide(base | {"clip_raw": float("inf")}, MixConfig("raw", threshold=0.2), pool)
    assert not d.keep and d.reason == "mix: no clip_raw score"


def test_partly_scored_candidates_give_the_best_scored_one():
    assert synthetic_of({"captions": ["a", "b", "c"], "clip_captions": [None, 0.2, 0.3]}) == ("c", 0.3)
    assert synthetic_of({"captions": ["a", "b"], "clip_captions": [float("nan"), 0.2]}) == ("b", 0.2)
    assert synthetic_of({"captions": ["a", "b"], "clip_captions": [None, None]}) == ("a", None)
    assert synthetic_of({"captions": ["a", "b"], "clip_captions": [0.5]}) == ("a", None)  # unpaired


def test_nan_never_reaches_min_max_or_json():
    x = np.array([0.2, np.nan, 0.4, np.inf, -np.inf], dtype=np.float32)
    assert (MinMax.of(x).lo, MinMax.of(x).hi) == (pytest.approx(0.2), pytest.approx(0.4))
    assert json.dumps([json_float(v) for v in x], allow_nan=False) == \
        json.dumps([float(np.float32(0.2)), None, float(np.float32(0.4)), None, None])


def test_an_error_row_keeps_its_reason():
    d = decide({"key": "a", "status": "error", "error": "decode: bad", "captions": []}, MixConfig("raw"),
               PoolNumbers(MinMax(None, None), MinMax(None, None), None))
    assert not d.keep and d.reason == "decode: bad"
