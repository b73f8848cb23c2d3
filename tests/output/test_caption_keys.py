"""`mix --caption-keys`: every caption of a kept sample under a top-level json key, encoded
column-wise exactly as one row at a time, written by the mix in the form open_clip's
`--json-text-key` reads; and the caption choice readers make among those keys."""
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recaption import api
from recaption.engines import Execution
from recaption.errors import RecaptionError
from recaption.output import caption_keys as ck
from recaption.overlay.caption_choice import CaptionChoice
from recaption.output.members import splice_recaption, with_recaption
from tests.helpers import CAPTIONERS, annotate_by_captioners, read_output, strategy_names

QUIET = Execution(quiet=True)


def test_column_encoding_is_one_row_at_a_time():
    rng = random.Random(1)
    texts = [None, "", "plain", 'a "q"', "b\\s", "nl\n\x01", "ünï 猫 🐱", "\u2028", " ", "x" * 200]
    who = [None, "m", "org/model-x", "/a/b/", "a;b c", "imported", "Ünï/猫"]
    rows = []
    for _ in range(2000):
        n = rng.choice([0, 0, 1, 3, 12])
        rows.append({"raw_caption": rng.choice(texts), "synthetic_caption": rng.choice(texts),
                     "captioner": rng.choice(who),
                     "captions": None if rng.random() < 0.05 else [rng.choice(texts[1:]) for _ in range(n)]})
    schema = pa.schema([("raw_caption", pa.string()), ("synthetic_caption", pa.string()),
                        ("captioner", pa.string()), ("captions", pa.list_(pa.string()))])
    t = pa.Table.from_pylist(rows, schema=schema)
    for level in ("none", "best", "all"):
        want = [ck.text_of(ck.as_dict(r, level)) for r in rows]
        assert ck.encode(t, level) == want
        assert ck.encode(t.slice(7, 50), level) == want[7:57]  # a slice's offsets start past 0
    assert ck.encode(t, "none") == [b""] * len(rows)
    assert any(b"recaption_candidate_11" in x for x in ck.encode(t, "all"))
    nulls = pa.table({"raw_caption": pa.nulls(2), "synthetic_caption": pa.nulls(2), "captioner": pa.nulls(2),
                      "captions": pa.array([[], None], pa.list_(pa.string()))})
    assert ck.encode(nulls, "all") == [b"", b""]


@pytest.mark.parametrize("text", [b'{"url": "u"}', b"{}", b'{"recaption_raw": 1, "u": 2}', b'{"x": NaN}',
                                  b'{"\\u0072ecaption_synthetic": "old"}', None])
def test_the_keys_splice_as_the_writer_writes_them(text):
    row = {"raw_caption": "alt", "synthetic_caption": "syn", "captioner": "org/cap", "captions": ["a", None, "c"]}
    keys = ck.as_dict(row, "all")
    assert list(keys) == ["recaption_raw", "recaption_synthetic", "recaption_synthetic_cap", "recaption_candidate_0",
                          "recaption_candidate_2"]
    rc = {"strategy": "raw"}
    meta, written = with_recaption(text, rc, None, keys)
    obj = json.loads(written)
    assert {k: obj[k] for k in keys} == keys and list(obj)[-1] == "recaption" and obj["recaption"] == rc
    fast = splice_recaption(text, json.dumps(rc).encode(), ck.text_of(keys)) if text else None
    assert fast is None or fast == written


def test_captioner_names_are_safe_keys():
    assert ck.captioner_name("Salesforce/blip-image-captioning-base") == "blip-image-captioning-base"
    assert ck.captioner_name("/home/me/models/blip/") == "blip"
    assert ck.captioner_name("/models/coca;ViT L") == "coca-ViT-L"
    assert ck.captioner_name("Ünï") == "-n-"
    for who in CAPTIONERS.values():
        name = ck.BY_CAPTIONER + ck.captioner_name(who)
        assert ck.is_key(name) and ";" not in name and " " not in name
    ck.check_captioners(["a/blip", "b/coca", "a/blip"])
    with pytest.raises(RecaptionError, match="'a/blip' and 'b/blip' would share the json key recaption_synthetic_blip"):
        ck.check_captioners(["a/blip", "b/blip"])


@pytest.fixture(scope="module")
def keyed_ann(shard_dir, tmp_path_factory):
    return annotate_by_captioners(shard_dir, tmp_path_factory.mktemp("keys") / "ann")


@pytest.mark.parametrize("strategy", strategy_names())
def test_every_caption_under_its_own_top_level_key(shard_dir, keyed_ann, tmp_path, strategy):
    from recaption.mixing.strategies import MixConfig

    cfg = MixConfig(strategy, fraction=0.6 if strategy != "synthetic" else None, caption_keys="all")
    out, plain = tmp_path / "keys", tmp_path / "plain"
    s = api.mix(str(shard_dir), str(keyed_ann), str(out), cfg, execution=QUIET)
    api.mix(str(shard_dir), str(keyed_ann), str(plain), MixConfig(**{**cfg.__dict__, "caption_keys": "none"}),
            execution=QUIET)
    assert s["caption_keys"] == "all" and s["counts"]["written"] > 0
    annotations = {r["key"]: r for p in sorted(keyed_ann.glob("*.parquet")) for r in pq.read_table(p).to_pylist()}
    got, without = read_output(out), read_output(plain)
    assert set(got) == set(without)  # the keys change no decision, and txt stays as the strategy decides
    seen = set()
    for key, sample in got.items():
        m, other = sample.members, without[key].members
        assert m["txt"] == other["txt"] and m.get("syn.txt") == other.get("syn.txt")
        obj, rc = json.loads(m["json"]), json.loads(m["json"])["recaption"]
        assert rc == json.loads(other["json"])["recaption"]
        a = annotations[key]
        want = {"recaption_raw": a["raw_caption"], "recaption_synthetic": rc["synthetic_caption"]}
        if rc["synthetic_caption"] is not None:
            want[ck.BY_CAPTIONER + ck.captioner_name(a["captioner"])] = rc["synthetic_caption"]
        want.update({f"recaption_candidate_{i}": c for i, c in enumerate(a["captions"])})
        want = {k: v for k, v in want.items() if v is not None}
        assert {k: v for k, v in obj.items() if k.startswith("recaption_")} == want
        # open_clip splits --json-text-key on ';' and strips each key: every key survives that
        assert all(k.split(";") == [k] and k == k.strip() and isinstance(v, str) for k, v in want.items())
        seen |= set(want)
    assert {"recaption_raw", "recaption_synthetic", "recaption_synthetic_blip-image-captioning-base",
            "recaption_synthetic_coca-ViT-L", "recaption_synthetic_imported", "recaption_candidate_2"} <= seen


def test_caption_keys_are_a_recorded_setting(shard_dir, keyed_ann, tmp_path, capsys):
    from tests.helpers import cli

    out = tmp_path / "out"
    base = ["mix", shard_dir, "-a", keyed_ann, "-o", out, "--strategy", "both", "-q"]
    assert cli(*base, "--caption-keys", "best") == 0
    assert cli(*base, "--caption-keys", "best") == 0  # the same command resumes
    capsys.readouterr()
    assert cli(*base) == 2 and "--overwrite" in capsys.readouterr().err  # other settings are refused
    assert cli(*base, "--caption-keys", "every") == 2  # the CLI knows the choices
    import re

    from recaption.mixing import CAPTION_KEYS
    from recaption.mixing.strategies import MixConfig

    assert f"unknown --caption-keys value 'every' (known: {', '.join(CAPTION_KEYS)})" in capsys.readouterr().err
    with pytest.raises(RecaptionError, match=re.escape(f"unknown --caption-keys value 'every' (known: "
                                                       f"{', '.join(CAPTION_KEYS)})")):
        MixConfig("raw", caption_keys="every").validate()  # and so does the API


def test_a_recipe_takes_caption_keys():
    from recaption.recipes import load_recipe, recipe_parts

    r = load_recipe("datacomp-clip", ["mix.caption_keys=all"])
    assert recipe_parts(r).mix.caption_keys == "all"
    with pytest.raises(RecaptionError, match="caption-keys"):
        recipe_parts(load_recipe("datacomp-clip", ["mix.caption_keys=some"]))


def test_a_choice_follows_open_clips_rule():
    c = CaptionChoice({"recaption_raw": 3, "recaption_synthetic": 1, "recaption_candidate_0": 0})
    picks = [c.pick([True, True, True], "s", f"k{i}", 0) for i in range(20000)]
    assert abs(picks.count(0) / len(picks) - 0.75) < 0.02 and picks.count(2) == 0
    assert [c.pick([False, True, True], "s", f"k{i}", 0) for i in range(50)] == [1] * 50  # renormalised
    assert c.pick([False, False, True], "s", "k", 0) == 2  # a zero weight is a fallback
    assert c.pick([False, False, False], "s", "k", 0) is None
    again = [c.pick([True, True, True], "s", f"k{i}", 0) for i in range(20000)]
    assert again == picks  # fixed per sample and epoch...
    assert [c.pick([True, True, True], "s", f"k{i}", 1) for i in range(20000)] != picks  # ...and new each epoch
    prio = CaptionChoice("recaption_synthetic; recaption_raw")
    assert prio.weights == (0.0, 0.0) and prio.pick([False, True], "s", "k", 0) == 1
    assert prio.pick([True, True], "s", "k", 5) == 0
    assert CaptionChoice(["recaption_raw", "recaption_candidate_3"], [1]).level == "all"
    for bad, match in ((["txt"], "not a caption key"), ("recaption_raw;recaption_raw", "named twice"),
                       (["recaption_raw"], "weights"), ([], "at least one")):
        with pytest.raises(RecaptionError, match=match):
            CaptionChoice(bad, [1, 2] if match == "weights" else None)
