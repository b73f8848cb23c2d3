"""Issue 9: a corpus of every kind of bad input; input = written + dropped, sample by sample."""
import pytest

from recaption.testing.corpus import build
from tests.helpers import dropped, read_output, summary
from tests.helpers import cli


pytestmark = pytest.mark.slow  # a whole run over a corpus of every bad input


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def result(corpus, tiny_models, minilm, tmp_path_factory):
    shards, _ = corpus
    recipe = tmp_path_factory.mktemp("r") / "recipe.yaml"
    recipe.write_text(
        f"captioner: {tiny_models['blip']}\n"
        "caption: {strategy: sample, num_captions: 2, top_p: 0.9, max_new_tokens: 4}\n"
        f"clip: {{model: '{tiny_models['clip']}'}}\n"
        f"sieve: {{model: '{minilm}'}}\n"
        "mix: {strategy: raw}\n"
        "batch_size: 4\n")
    out = tmp_path_factory.mktemp("o") / "out"
    code = cli("run", recipe, shards, "-o", out, "--max-pixels", 100_000, "-q")
    return out, code


def test_every_sample_lands_in_exactly_one_place(corpus, result):
    _, expect = corpus
    out, code = result
    assert code == 1  # some shards could not be read whole: the exit status says so
    got, drops = read_output(out), dropped(out)
    by_key = {}
    for (k, shard), reason in drops.items():
        by_key.setdefault(k, []).append((shard, reason))
    for key, outcome in expect.items():
        if outcome is None:
            assert key in got, f"{key} should be written"
        else:
            assert key not in got, f"{key} should be dropped"
            assert any(outcome in r for _, r in by_key.get(key, [])), (key, by_key.get(key))
    assert by_key["dup"][0][1].startswith("read: duplicate key")  # the second 'dup' is refused
    assert "'..'" in by_key["../escape"][0][1] and "absolute" in by_key["/abs"][0][1]
    shard_errors = {s: r for s, r in by_key[None]}
    assert set(shard_errors) == {"00002", "00003", "00004", "00005"}
    assert "truncated" in shard_errors["00002"] and "not a tar" in shard_errors["00003"]
    assert "end-of-archive" in shard_errors["00005"]  # cut between two samples
    assert "no samples" in shard_errors["00004"]
    # the truncated shard: samples before the cut are written, the one cut through is dropped, none after
    s2 = [f"s2_{i}" for i in range(4)]
    written = [k for k in s2 if k in got]
    assert written and written == s2[: len(written)]
    cut = [k for k in s2 if k in by_key]
    assert all("cut off" in by_key[k][0][1] for k in cut) and len(written) + len(cut) <= 4
    sm = summary(out)
    assert sm["counts"]["read"] == sm["counts"]["written"] + sm["counts"]["dropped"] - len(shard_errors)
    assert {e["shard"] for e in sm["shard_errors"]} == set(shard_errors)


def test_odd_images_are_decoded_and_huge_captions_kept_whole(corpus, result):
    shards, _ = corpus
    out, _ = result
    got = read_output(out)
    for k in ("png16", "cmyk", "palette", "animated", "webp"):
        assert got[k].meta["recaption"]["clip_raw"] is not None
    huge = got["huge"]
    assert len(huge.members["txt"]) > 90_000 and huge.meta["recaption"]["clip_raw"] is not None
    assert got["dup"].members["txt"] == b"first"


def test_no_member_name_is_used_as_a_path(result, tmp_path):
    out, _ = result
    import tarfile

    names = []
    for t in sorted(out.glob("*.tar")):
        with tarfile.open(t) as tf:
            names += tf.getnames()
    assert names  # the loop saw the written shards
    assert all(not n.startswith("/") and ".." not in n.split("/") for n in names)


def test_annotate_names_every_shard_not_read_whole_and_exits_1(corpus, tiny_models, tmp_path, capsys):
    import json
    import shutil

    shards, _ = corpus
    d = tmp_path / "shards"
    shutil.copytree(shards, d)
    (d / "00006.tar").write_bytes(b"")  # a 0-byte file
    code = cli("score", d, "-a", tmp_path / "a", "--clip-model", tiny_models["clip"], "--no-sieve", "-q", "--json")
    assert code == 1
    s = json.loads(capsys.readouterr().out)
    failed = {f["shard"]: f["error"] for f in s["failed_shards"]}
    assert set(failed) == {"00002", "00003", "00004", "00005", "00006"}
    assert "end-of-archive" in failed["00005"]
    assert "truncated" in failed["00002"] and "not a tar" in failed["00003"] and "no samples" in failed["00004"]
    assert s["errors"] > 0 and s["error_reasons"]


def test_every_sample_failing_is_a_failure_with_its_reason(shard_dir, tiny_models, tmp_path, capsys):
    code = cli("score", shard_dir, "-a", tmp_path / "a", "--clip-model", tiny_models["clip"], "--no-sieve",
               "--max-pixels", 1000, "-q")
    assert code == 1
    out = capsys.readouterr().out
    assert "samples with errors" in out and "over the limit" in out
