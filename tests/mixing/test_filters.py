"""The published filters on purpose-built shards: each rule at and around its boundary (exactly
200 px, exactly 3.0, 2 vs 3 words, 5 vs 6 characters, 5119 vs 5120 bytes, a CLIP score equal to the
limit), through real annotation (metrics, the bundled fastText model, a tiny CLIP) and a real mix;
every sample ends in exactly one place, and drops name the rule and the row's value."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recaption import annotators, api
from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.mixing.filters import FilterSet, normalize
from recaption.mixing.strategies import MixConfig, PoolNumbers, decide
from recaption.scoring.blend import MinMax, kept_rank
from recaption.demo.samples import write_tar
from tests.helpers import dropped, input_samples, read_output, variant_names
from tests.helpers import cli

EN = "a small red bird sitting on a green branch"  # English, 9 words, 42 characters


def jpeg(w: int, h: int, size: int | None = None) -> bytes:
    """A JPEG of w x h; with `size`, padded to exactly that many bytes by a comment segment."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 60, 60)).save(buf, format="JPEG", quality=80)
    data = buf.getvalue()
    if size is not None:
        pad = size - len(data) - 4  # FF FE, a 2-byte length, the comment
        assert 0 <= pad < 65000, (len(data), size)
        data = data[:2] + b"\xff\xfe" + (pad + 2).to_bytes(2, "big") + b"x" * pad + data[2:]
        assert len(data) == size
    return data


# key: (alt-text, original size or None, stored size, image bytes or None)
CASES = {
    "side199": (EN, (199, 400), (64, 128), None),
    "side200": (EN, (200, 400), (64, 128), None),
    "side201": (EN, (400, 201), (128, 64), None),
    "aspect3": (EN, (600, 200), (96, 32), None),  # exactly 3.0: kept
    "aspect301": (EN, (602, 200), (96, 32), None),  # 3.01: dropped
    "aspect299": (EN, (200, 598), (32, 96), None),
    "stored150": (EN, None, (150, 150), None),  # no original size in the json: the stored one counts
    "stored256": (EN, None, (256, 256), None),
    "orig_over_stored": (EN, (400, 400), (48, 48), None),  # resized small, original big: kept
    "words2": ("red bird", (400, 400), (48, 48), None),
    "words3": ("a red bird", (400, 400), (48, 48), None),
    "chars4": ("abcd", (400, 400), (48, 48), None),
    "chars5": ("abcde", (400, 400), (48, 48), None),
    "chars6": ("abcdef", (400, 400), (48, 48), None),
    "german": ("der schnelle braune Fuchs springt über den faulen Hund", (400, 400), (48, 48), None),
    "no_alt": ("", (400, 400), (48, 48), None),
    "bytes5119": (EN, (400, 400), (48, 48), 5119),
    "bytes5120": (EN, (400, 400), (48, 48), 5120),
}


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_models):
    """Two shards of the cases, annotated with the filter metrics and a tiny CLIP."""
    d = tmp_path_factory.mktemp("filter-shards")
    shards, ann_dir = d / "shards", d / "ann"
    items = list(CASES.items())
    for s, part in enumerate((items[:9], items[9:])):
        samples = []
        for key, (alt, orig, stored, nbytes) in part:
            meta = {"key": key, "url": f"https://example.com/{key}.jpg", "caption": alt, "status": "success",
                    "width": stored[0], "height": stored[1]}
            if orig:
                meta.update(original_width=orig[0], original_height=orig[1])
            samples.append((key, {"jpg": jpeg(*stored, size=nbytes), "txt": alt.encode(),
                                  "json": json.dumps(meta).encode()}))
        write_tar(shards / f"{s:05d}.tar", samples)
    assert cli("score", shards, "-a", ann_dir, "--clip-model", tiny_models["clip"], "--no-sieve", "-q") == 0
    rows = {r["key"]: r for f in sorted(ann_dir.glob("*.parquet")) for r in ann.read_rows(str(f))}
    return shards, ann_dir, rows, d


def test_the_metrics_are_what_the_rules_read(pool):
    _, _, rows, _ = pool
    assert rows["side199"]["original_width"] == 199 and rows["side199"]["width"] == 64
    assert rows["stored150"]["original_width"] is None and rows["stored150"]["width"] == 150
    assert (rows["words2"]["caption_words"], rows["chars5"]["caption_chars"]) == (2, 5)
    assert rows["bytes5119"]["image_bytes"] == 5119 and rows["bytes5120"]["image_bytes"] == 5120
    assert rows[next(iter(CASES))]["lang"] == "en" and rows["german"]["lang"] == "de"
    assert rows["no_alt"]["raw_caption"] is None and rows["no_alt"]["lang"] is None


def _mix(pool, out, *filters, strategy="raw", **kw):
    shards, ann_dir, _, _ = pool
    s = api.mix(str(shards), str(ann_dir), str(out), MixConfig(strategy, filters=list(filters), **kw))
    kept = set(read_output(out))
    drops = {k: r for (k, _), r in dropped(out).items()}
    # every input sample ends in exactly one place
    assert kept.isdisjoint(drops) and kept | set(drops) == set(input_samples(shards))
    assert api.verify(str(out)) == []  # each filter reason counted in its rule's category
    return s, kept, drops


@pytest.mark.parametrize("rule, dropped_keys, reasons", [
    ("min-side=200", {"side199", "stored150"}, {"side199": "filter: min-side 199 < 200",
                                                "stored150": "filter: min-side 150 < 200"}),
    ("max-aspect=3", {"aspect301"}, {"aspect301": "filter: max-aspect 3.01 > 3"}),
    ("min-words=3", {"words2", "chars4", "chars5", "chars6", "no_alt"},
     {"words2": "filter: min-words 2 < 3", "no_alt": "filter: min-words: no alt-text"}),
    ("min-chars=6", {"chars4", "chars5", "no_alt"}, {"chars5": "filter: min-chars 5 < 6"}),
    ("min-chars=5", {"chars4", "no_alt"}, {"chars4": "filter: min-chars 4 < 5"}),  # LAION: shorter than 5
    # the other images are small JPEGs (under 1 KB): only the one padded to exactly 5120 bytes stays
    ("min-image-bytes=5120", set(CASES) - {"bytes5120"}, {"bytes5119": "filter: min-image-bytes 5119 < 5120"}),
    ("english", None, {"german": "filter: english: lang de", "no_alt": "filter: english: no alt-text"}),
])
def test_each_rule_at_its_boundary(pool, tmp_path, rule, dropped_keys, reasons):
    s, kept, drops = _mix(pool, tmp_path / "out", rule)
    drops = {k: r for k, r in drops.items() if r.startswith("filter:")}  # not `mix: no raw caption`
    if dropped_keys is not None:
        assert set(drops) == dropped_keys
    for k, why in reasons.items():
        assert drops[k] == why
    inside = {"side200", "side201", "aspect3", "aspect299", "stored256", "orig_over_stored", "words3", "bytes5120"}
    assert inside - set(drops) <= kept  # at or just inside every boundary: kept
    name = rule.split("=")[0]
    assert s["filters"][0]["rule"] == rule and s["filters"][0]["dropped"] == len(drops)
    assert {k for k in s["counts"]["dropped_by_reason"] if k.startswith("filter")} <= \
        {f"filter: {name}", f"filter: {name}: no alt-text"}


def test_min_clip_raw_keeps_a_score_equal_to_the_limit(pool, tmp_path):
    _, _, rows, _ = pool
    scores = sorted({np.float32(r["clip_raw"]).item() for r in rows.values() if r["clip_raw"] is not None})
    t = scores[len(scores) // 2]  # a value some row holds exactly (float32, as stored)
    s, kept, drops = _mix(pool, tmp_path / "out", f"min-clip-raw={t!r}")
    for k, r in rows.items():
        if r["clip_raw"] is None:
            assert drops[k] == "filter: min-clip-raw: no clip_raw score"
        elif r["clip_raw"] >= t:
            assert k in kept
        else:
            assert drops[k].startswith("filter: min-clip-raw ") and drops[k].endswith(f" < {t!r}")


def test_language_scoped_clip_floors(pool):
    _, _, rows, _ = pool
    fs = FilterSet.of({"min-clip-raw-en": 2.0})  # impossible for English rows, ignored for others
    t = _table(rows)
    code = fs.codes(t)
    lang = t["lang"].to_pylist()
    assert all((c >= 0) == (lg == "en") for c, lg in zip(code, lang))
    code = FilterSet.of({"min-clip-raw-other": 2.0}).codes(t)
    assert all((c >= 0) == (lg != "en") for c, lg in zip(code, lang))


def _table(rows: dict) -> pa.Table:
    return ann.to_table(list(rows.values()), schema=annotators.schema())


def test_basic_preset_first_failing_rule_wins_and_counts(pool, tmp_path):
    s, kept, drops = _mix(pool, tmp_path / "out", "basic")
    assert kept == {"side200", "side201", "aspect3", "aspect299", "stored256", "orig_over_stored", "words3",
                    "bytes5119", "bytes5120"}
    assert drops["german"] == "filter: english: lang de"  # english comes first: it is also 9 words
    assert drops["chars5"].startswith("filter: english") or drops["chars5"].startswith("filter: min-words")
    f = {x["rule"]: x for x in s["filters"]}
    assert list(f) == ["english", "min-words=3", "min-chars=6", "min-side=200", "max-aspect=3"]
    assert sum(x["dropped"] for x in f.values()) == len(drops) == s["counts"]["dropped"]
    assert f["min-side=200"]["alone"] == 2 and f["max-aspect=3"]["alone"] == 1
    assert f["english"]["lacking"] == 1  # no alt-text
    # the decisions file keeps its columns; filtered rows are not kept and carry their reason
    t = pq.read_table(tmp_path / "out" / "_decisions" / "00000.parquet")
    assert t.column_names[:4] == ["key", "kept", "reason", "caption_source"]
    meta = json.loads(t.schema.metadata[b"recaption.decisions"])
    assert meta["filters"] == normalize("basic")


def test_the_fraction_is_taken_over_rows_that_passed(pool, tmp_path):
    _, _, rows, _ = pool
    s, kept, _ = _mix(pool, tmp_path / "out", "min-words=3", fraction=0.5)
    passed = [r["clip_raw"] for r in rows.values() if (r["caption_words"] or 0) >= 3 and r["clip_raw"] is not None]
    v = np.sort(np.asarray(passed, dtype=np.float32).astype(np.float64))[::-1]
    assert s["threshold"] == v[kept_rank(len(v), 0.5)]
    assert s["min_max"]["clip_raw"] == [float(v.min()), float(v.max())]


def test_dry_run_shows_rule_counts_and_every_strategy(pool, capsys):
    shards, ann_dir, _, _ = pool
    assert cli("mix", shards, "-a", ann_dir, "--filter", "basic", "--strategy", "raw", "--fraction", "0.5",
               "--dry-run", "--json") == 0
    s = json.loads(capsys.readouterr().out)
    assert [f["rule"] for f in s["filters"]] == ["english", "min-words=3", "min-chars=6", "min-side=200",
                                                "max-aspect=3"]
    names = [r["strategy"] for r in s["strategies"]]
    assert names == variant_names()
    raw = s["strategies"][0]
    assert (raw["kept"], raw["threshold"]) == (s["counts"]["written"], s["threshold"])
    assert raw["kept"] + raw["dropped"] == s["counts"]["read"]
    assert "note" in s["strategies"][1]  # no candidates were written: no synthetic scores to cut by
    assert cli("mix", shards, "-a", ann_dir, "--filter", "basic", "--fraction", "0.5", "--strategy", "raw",
               "--dry-run") == 0
    text = capsys.readouterr().out
    assert "min-side=200" in text and "every strategy at fraction 0.5" in text and "> raw" in text


def test_a_file_without_metrics_is_one_line_naming_it(pool, tmp_path, capsys):
    shards, ann_dir, _, _ = pool
    old = tmp_path / "old"
    old.mkdir()
    for f in ann_dir.glob("*.parquet"):  # as written before the metrics existed
        t = pq.read_table(f)
        t = t.select([c for c in t.column_names if c not in annotators.group_columns("metrics")])
        meta = json.loads(t.schema.metadata[b"recaption"])
        meta["groups"].pop("metrics")
        pq.write_table(t.replace_schema_metadata({b"recaption": json.dumps(meta).encode()}), old / f.name)
    assert cli("mix", shards, "-a", old, "--filter", "english", "--strategy", "raw", "--dry-run") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "00000.parquet has no filter metrics" in err[0] and "recaption score" in err[0]
    # a rule on the fixed columns needs no metrics; and no rules at all still mix old files
    assert cli("mix", shards, "-a", old, "--filter", "min-clip-raw=-1", "--strategy", "raw", "--dry-run") == 0
    assert cli("mix", shards, "-a", old, "--strategy", "raw", "--dry-run") == 0
    # `score --no-clip --no-sieve` adds the metrics and nothing else; then the rules apply
    rec = json.loads((ann_dir / "_recaption.json").read_text())
    rec["groups"].pop("metrics")
    (old / "_recaption.json").write_text(json.dumps(rec))
    before = {f.name: pq.read_table(f, columns=["clip_raw"]) for f in old.glob("*.parquet")}
    assert cli("score", shards, "-a", old, "--no-clip", "--no-sieve", "-q") == 0
    assert {f.name: pq.read_table(f, columns=["clip_raw"]) for f in old.glob("*.parquet")} == before
    capsys.readouterr()
    assert cli("mix", shards, "-a", old, "--filter", "english", "--strategy", "raw", "--dry-run", "--json") == 0
    assert json.loads(capsys.readouterr().out)["filters"][0]["dropped"] == 2  # german, no alt-text


def test_rows_lacking_what_a_rule_tests_are_dropped_saying_so():
    rows = [annotators.empty_row("a", "s", "a fine caption here"),
            annotators.empty_row("b", "s", "another fine caption")]
    rows[0].update(lang="en", caption_words=4, caption_chars=19, width=300, height=300, image_bytes=9000)
    rows[1].update(lang="en", caption_words=3, caption_chars=20)  # no size, no image bytes recorded
    t = ann.to_table(rows, schema=annotators.schema())
    fs = FilterSet.of(["min-side=200", "min-image-bytes=5120"])
    code = fs.codes(t)
    assert code.tolist() == [-1, 1]  # rule 0 lacks its input on row 1
    assert fs.reasons(t, code).to_pylist() == [None, "filter: min-side: no image size"]
    assert fs.category(1) == "filter: min-side: no image size"


def test_one_row_decide_applies_the_rules():
    row = annotators.empty_row("k", "s", "ok caption") | {"clip_raw": 0.3, "lang": "en", "caption_words": 2,
                                                   "caption_chars": 10, "width": 300, "height": 300}
    pool = PoolNumbers(MinMax(None, None), MinMax(0.0, 1.0), None)
    d = decide(row, MixConfig("raw", filters=["min-words=3"]).validate(), pool)
    assert not d.keep and d.reason == "filter: min-words 2 < 3"
    assert decide(row, MixConfig("raw", filters=["min-words=2"]).validate(), pool).keep


@pytest.mark.parametrize("spec, error", [
    (["min-side"], "needs a value"), (["min-side=abc"], "needs a number"), (["min-words=2.5"], "whole number"),
    (["english=3"], "takes no value"), (["max-aspect=0.5"], ">= 1"), (["nope=1"], "unknown filter"),
])
def test_bad_rules_are_one_clear_error(spec, error):
    with pytest.raises(RecaptionError, match=error):
        MixConfig("raw", filters=spec).validate()


def test_rules_normalize_in_order_with_presets_and_overrides():
    assert normalize(["basic", "min-side=300"]) == {"english": None, "min-words": 3, "min-chars": 6,
                                                    "min-side": 300, "max-aspect": 3.0}
    assert normalize({"basic": True, "english": False}) == {"min-words": 3, "min-chars": 6, "min-side": 200,
                                                            "max-aspect": 3.0}
    assert normalize("lang=en, de") == {"lang": "en,de"}
    assert normalize(None) == {} == normalize([])
