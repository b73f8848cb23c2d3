"""Issue 35 (1, 2, 5): named caption groups. One `annotate` writes a short group (tiny BLIP) and a
long group (the tiny BLIP-2, standing in for a VLM, with longer decoding) into one folder; each
group resumes, is refused and is redone on its own; a group added later leaves the others' columns
and the mixes made from them as they were; `mix --synthetic-group` and `--caption-keys` read and
write them by group; the recipes pinned to Recap-DataComp-1B and DreamLIP hold their values."""
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from recaption import annotators
from recaption.annotators import groups
from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.output import caption_keys
from recaption.overlay.caption_choice import CaptionChoice
from recaption.recipes import load_recipe, recipe_parts
from tests.helpers import cli, input_samples

pytestmark = pytest.mark.slow  # tiny captioners run for real

LONG = "long={blip2},max_new_tokens=24,min_new_tokens=12,num_captions=2,decoding=beam,num_beams=2"
TEMPLATES = Path(__file__).resolve().parents[2] / "prompts" / "templates"
NAMED = [f"{b}.{g}" for g in ("short", "long") for b in groups.FAMILIES]


def _common(tiny_models, minilm):
    return ["--clip-model", tiny_models["clip"], "--sieve-model", minilm, "--batch-size", 4, "-q"]


def _annotate(shards, out, tiny_models, minilm, *specs, extra=()):
    args = ["annotate", shards, "-o", out, "--captioner", "none"]
    for s in specs:
        args += ["--group", s.format(**tiny_models)]
    return cli(*args, *_common(tiny_models, minilm), *extra)


@pytest.fixture(scope="module")
def two_groups(tmp_path_factory, shard_dir, tiny_models, minilm):
    out = tmp_path_factory.mktemp("groups")
    assert _annotate(shard_dir, out, tiny_models, minilm, "short={blip}", LONG) == 0
    return out


def _table(folder, name="00000"):
    return pq.read_table(folder / f"{name}.parquet")


def test_one_pass_writes_each_group_under_its_own_columns_and_settings(two_groups, shard_dir, tiny_models):
    inputs = input_samples(shard_dir)
    for f in sorted(two_groups.glob("*.parquet")):
        t = _table(two_groups, f.stem)
        recorded = ann.metadata(t)["groups"]
        assert set(NAMED) <= set(recorded) and "captions" not in recorded  # --captioner none: no unnamed group
        assert recorded["captions.short"]["model"] != recorded["captions.long"]["model"]
        assert recorded["captions.long"]["decoding"]["max_new_tokens"] == 24
        assert recorded["clip.short"] == recorded["clip.long"]  # the pass's CLIP model scores both
        for r in t.to_pylist():
            assert r["key"] in inputs and r["status"] == "ok"
            assert r["captions"] == [] and r["clip_captions"] == []  # the unnamed columns, as section 2 has them
            assert r["captioner__short"] == tiny_models["blip"] and len(r["captions__short"]) == 1
            assert r["captioner__long"] == tiny_models["blip2"] and len(r["captions__long"]) == 2
            for g in ("short", "long"):
                assert len(r[f"clip_captions__{g}"]) == len(r[f"captions__{g}"])
                assert len(r[f"clip_captions_tokens__{g}"]) == len(r[f"captions__{g}"])  # every candidate counted
                if r["raw_caption"] is not None:
                    assert r[f"sieve_best__{g}"] in r[f"captions__{g}"]
        assert ann.metadata(t)["groups"] == json.loads((two_groups / "_recaption.json").read_text())["groups"] | {
            "tarindex": recorded["tarindex"]}


def test_a_group_added_later_leaves_the_others_and_their_mix_as_they_were(tmp_path, shard_dir, tiny_models, minilm):
    ann_dir = tmp_path / "ann"
    assert _annotate(shard_dir, ann_dir, tiny_models, minilm, "short={blip}") == 0
    before = _table(ann_dir)
    mixed = tmp_path / "mixed"
    assert cli("mix", shard_dir, "-a", ann_dir, "-o", mixed, "--strategy", "synthetic", "--synthetic-group", "short",
               "-q") == 0
    assert _annotate(shard_dir, ann_dir, tiny_models, minilm, "short={blip}") == 0  # resumes: nothing to do
    assert _table(ann_dir).equals(before)
    assert _annotate(shard_dir, ann_dir, tiny_models, minilm, LONG) == 0  # only the new group runs
    after = _table(ann_dir)
    for c in before.column_names:  # short, the filter metrics, the member index: untouched
        assert after[c].equals(before[c]), c
    assert {"captions__long", "sieve__long"} <= set(after.column_names)
    from recaption.api import verify

    assert verify(str(mixed)) == []  # the mix of the short group still agrees with what it read

    # long's settings changed: refused naming it; with --overwrite only long is redone
    other = LONG.replace("max_new_tokens=24", "max_new_tokens=20")
    assert _annotate(shard_dir, ann_dir, tiny_models, minilm, other) != 0
    assert _annotate(shard_dir, ann_dir, tiny_models, minilm, other, extra=("--overwrite",)) == 0
    redone = _table(ann_dir)
    assert ann.metadata(redone)["groups"]["captions.long"]["decoding"]["max_new_tokens"] == 20
    for c in before.column_names:
        assert redone[c].equals(before[c]), c


def test_new_unnamed_captions_keep_the_named_groups_and_metrics(tmp_path, two_groups, shard_dir, tiny_models, minilm):
    """The unnamed group captioned after the named ones: the file's rows are made anew from the
    shard, and the groups it keeps (named groups, filter metrics) keep their values."""
    ann_dir = tmp_path / "ann"
    shutil.copytree(two_groups, ann_dir)
    before = _table(ann_dir)
    assert cli("caption", shard_dir, "-o", ann_dir, "--model", tiny_models["blip"], "--num-captions", 2,
               "--decoding", "beam", "--num-beams", 2, "--batch-size", 4, "-q") == 0
    after = _table(ann_dir)
    assert all(len(c) == 2 for c in after["captions"].to_pylist())
    for c in [c for c in before.column_names if groups.column_group(c) or c in ("lang", "caption_words", "phash")]:
        assert after[c].equals(before[c]), c
    assert set(NAMED) <= set(ann.metadata(after)["groups"])


def test_the_metrics_survive_captions_added_to_a_scored_file(tmp_path, shard_dir, tiny_models):
    """A file holding only the filter metrics, then captioned: its metrics are recorded and kept."""
    ann_dir = tmp_path / "ann"
    assert cli("score", shard_dir, "-a", ann_dir, "--no-clip", "--no-sieve", "-q") == 0
    before = _table(ann_dir)
    assert cli("caption", shard_dir, "-o", ann_dir, "--model", tiny_models["blip"], "--batch-size", 4, "-q") == 0
    after = _table(ann_dir)
    assert "metrics" in ann.metadata(after)["groups"]
    for c in ("lang", "caption_words", "width", "image_sha256"):
        assert after[c].equals(before[c]), c


def test_mix_takes_the_synthetic_caption_from_the_group_asked_for(tmp_path, two_groups, shard_dir):
    out = tmp_path / "mixed"
    assert cli("mix", shard_dir, "-a", two_groups, "-o", out, "--strategy", "synthetic", "--synthetic-group", "long",
               "--caption-keys", "all", "-q") == 0
    rows = {r["key"]: r for f in sorted(two_groups.glob("*.parquet")) for r in ann.read_rows(str(f))}
    samples = list(wds.WebDataset(sorted(map(str, out.glob("*.tar"))), shardshuffle=False))
    assert len(samples) == len(rows)
    for s in samples:
        r, j = rows[s["__key__"]], json.loads(s["json"])
        scores = r["clip_captions__long"]
        best = r["captions__long"][scores.index(max(scores))]
        assert s["txt"].decode() == best == j["recaption_synthetic"] == j["recaption_group_long"]
        assert j["recaption"]["captioner"] == r["captioner__long"]
        assert j["recaption_group_short"] == r["captions__short"][0]
        assert [j[caption_keys.group_key("long", i)] for i in range(2)] == r["captions__long"]
        assert j["recaption_group_short_candidate_0"] == r["captions__short"][0]
        keys = [k for k in j if k.startswith(caption_keys.GROUP)]  # group by group, in name order
        assert keys == ["recaption_group_long", "recaption_group_long_candidate_0", "recaption_group_long_candidate_1",
                        "recaption_group_short", "recaption_group_short_candidate_0"]
    meta = json.loads(pq.read_schema(next((out / "_decisions").glob("*.parquet"))).metadata[b"recaption.decisions"])
    assert meta["synthetic_group"] == "long" and "captions__long" in meta["annotation_columns"]

    # the overlay draws txt among the group keys as it reads the input shards
    ov = tmp_path / "overlay"
    assert cli("mix", shard_dir, "-a", two_groups, "-o", ov, "--strategy", "raw", "--synthetic-group", "long",
               "--caption-keys", "best", "--overlay", "-q") == 0
    from recaption.webdataset import overlay

    stage = overlay(str(ov), captions="recaption_group_short;recaption_group_long", caption_probs=[1, 1], seed=1)
    read = list(wds.WebDataset(sorted(map(str, shard_dir.glob("*.tar"))), shardshuffle=False).compose(stage))
    picked = {s["txt"].decode() == rows[s["__key__"]]["captions__short"][0] for s in read}
    assert picked == {True, False}  # both groups drawn
    for s in read:
        r = rows[s["__key__"]]
        assert s["txt"].decode() in (r["captions__short"][0], *r["captions__long"])


def test_the_report_shows_the_groups_side_by_side(two_groups):
    from recaption.report.data import load
    from recaption.report.html import pages

    d = load(two_groups)
    assert set(d.groups) == {"short", "long"}
    for s in d.groups.values():
        assert s["samples"] > 0 and s["clip_n"] == s["samples"] and s["words_n"] == s["samples"]
    assert d.groups["short"]["captioners"] != d.groups["long"]["captioners"]
    page = pages(d)["index.html"].decode()
    assert "caption groups" in page and "<td>short</td>" in page and "<td>long</td>" in page


def test_a_file_without_the_group_is_one_line_naming_it(two_groups, shard_dir, capsys):
    assert cli("mix", shard_dir, "-a", two_groups, "--dry-run", "--strategy", "synthetic",
               "--synthetic-group", "medium") != 0
    err = capsys.readouterr().err
    assert "has no caption group 'medium'" in err and "'short'" in err and "--group medium=" in err


def test_group_names_and_options_are_checked_before_any_work(tmp_path, shard_dir, tiny_models, capsys):
    cases = [("Long=x", "caption group name"), ("long", "NAME=CAPTIONER"),
             (f"long={tiny_models['blip']},max_new_tokns=3", "max_new_tokens"),
             (f"long={tiny_models['blip']},num_beams", "KEY=VALUE")]
    for spec, said in cases:
        assert cli("annotate", shard_dir, "-o", tmp_path / "a", "--group", spec, "--no-clip", "--no-sieve") != 0
        assert said in capsys.readouterr().err, spec
        assert not (tmp_path / "a").exists()
    assert cli("mix", shard_dir, "-a", tmp_path, "--dry-run", "--strategy", "raw", "--synthetic-group", "a_b") != 0
    assert "--synthetic-group" in capsys.readouterr().err


def test_group_classes_are_derived_from_the_unnamed_ones():
    for name in NAMED:
        cls = annotators.get(name)
        base, group = groups.split(name)
        parent = annotators.get(base)  # the alt-text's columns stay the unnamed group's
        unnamed = {c.name for c in parent.columns} - {"clip_raw", *getattr(parent, "unnamed_only", ())}
        assert {c.name for c in cls.columns} == {groups.column(c, group) for c in unnamed}
        assert annotators.load_target(annotators.target(name)) is cls  # how a worker imports it
    assert annotators.dependents(["captions.long"])["captions.long"] == {"clip.long", "sieve.long", "length.long"}
    assert not any(groups.is_named(n) for n in annotators.dependents(["captions.long"])["captions"])
    assert not any(groups.is_named(n) for n in annotators.names())  # made, never registered
    with pytest.raises(RecaptionError, match="caption group name"):
        annotators.get("captions.Bad_name")


def test_caption_group_keys_are_caption_keys():
    for k in ("recaption_group_long", "recaption_group_long_candidate_3"):
        assert caption_keys.is_key(k)
    assert caption_keys.level_of("recaption_group_long") == "best"
    assert caption_keys.level_of("recaption_group_long_candidate_0") == "all"
    assert CaptionChoice("recaption_raw;recaption_group_long").level == "best"
    assert not caption_keys.is_key("recaption_group_Long")


def test_group_keys_encode_as_one_row_does():
    import pyarrow as pa

    best = pa.array(["a \"q\"", None, "c"])
    cands = pa.array([["a \"q\"", "b"], [], ["c"]])
    col = caption_keys.group_column(3, [("long", best, cands), ("short", pa.array([None, "s", "t"]), None)], "all")
    t = pa.table({"raw_caption": pa.array(["r", None, None]), "synthetic_caption": pa.nulls(3, pa.string()),
                  "captioner": pa.nulls(3, pa.string()), "captions": pa.array([[], [], []], pa.list_(pa.string())),
                  caption_keys.GROUPS: col})
    encoded = caption_keys.encode(t, "all")
    for row, text in zip(t.to_pylist(), encoded):
        assert caption_keys.text_of(caption_keys.as_dict(row, "all")) == text
    assert caption_keys.as_dict(t.to_pylist()[0], "all") == {
        "recaption_raw": "r", "recaption_group_long": "a \"q\"", "recaption_group_long_candidate_0": "a \"q\"",
        "recaption_group_long_candidate_1": "b"}
    assert caption_keys.group_values(t, "recaption_group_short").to_pylist() == [None, "s", "t"]


def test_recap_datacomp_is_the_papers():
    r = load_recipe("recap-datacomp")
    p = recipe_parts(r)
    cap = p.captioner
    assert "2406.08478" in r["source"]["paper"] and r["source"]["differs"]
    assert cap.template == "recap-datacomp" and cap.decoding.strategy == "greedy"
    assert cap.decoding.max_new_tokens == 128
    template = (TEMPLATES / f"{cap.template}.txt").read_text()  # the source tree's: what ships as recaption.prompts
    assert "Please generate a detailed caption of this image. Please be as descriptive as possible." in template
    assert (p.mix.strategy, p.mix.caption_keys) == ("raw", "best") and "0.8" in r["source"]["values"]["mix"]


def test_dreamlip_is_a_short_and_a_long_group():
    r = load_recipe("dreamlip")
    p = recipe_parts(r)
    assert "2403.17007" in r["source"]["paper"]
    assert p.captioner is None
    short, long = p.annotators["captions.short"], p.annotators["captions.long"]
    assert short.backend == "blip" and short.decoding.num_captions == 3
    assert long.template == "long-caption" and long.decoding.num_captions == 3
    assert (TEMPLATES / f"{long.template}.txt").is_file()
    assert long.decoding.max_new_tokens > short.decoding.max_new_tokens
    assert (p.mix.synthetic_group, p.mix.caption_keys) == ("long", "all")
    with pytest.raises(RecaptionError, match="groups.medium"):
        load_recipe("dreamlip", ["groups.medium.caption.top_p=0.5"])
