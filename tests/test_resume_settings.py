"""Issue 12.4 and 12.7: annotation folders remember the settings of each column group; the same
command resumes, other settings are refused unless --overwrite, a missing group is added; errors
come before anything is created; a run whose mix alone changed reuses its annotations."""
import json

import pytest

from recaption.io import annotations as ann
from recaption.io import folders
from recaption.io import tarindex
from tests.helpers import cli


def _rows(d):
    return {r["key"]: r for f in sorted(d.glob("*.parquet")) for r in ann.read_rows(str(f))}


def test_caption_after_raw_only_score_adds_the_captions(shard_dir, tiny_models, tmp_path):
    a = tmp_path / "a"
    assert cli("score", shard_dir, "-a", a, "--clip-model", tiny_models["clip"], "--no-sieve", "-q") == 0
    assert all(r["captions"] == [] for r in _rows(a).values())
    assert cli("caption", shard_dir, "-o", a, "-c", tiny_models["blip"], "--max-new-tokens", 4, "-q") == 0
    rows = _rows(a)
    assert all(len(r["captions"]) == 1 and r["captioner"] == tiny_models["blip"] for r in rows.values())
    # the CLIP scores were of a caption-less file: they no longer hold and are not kept under a false claim
    # (beside the groups: the identity of the shard the member index was read from)
    meta = ann.read_metadata(str(a / "00000.parquet"))
    assert set(meta["groups"]) == {"captions", "metrics", "fingerprints", tarindex.GROUP}
    assert meta["format_version"] == ann.FORMAT_VERSION
    assert all(r["clip_raw"] is None for r in rows.values())
    assert cli("score", shard_dir, "-a", a, "--clip-model", tiny_models["clip"], "--no-sieve", "-q") == 0
    rows = _rows(a)
    assert all(len(r["clip_captions"]) == 1 for r in rows.values())
    assert all(r["clip_raw"] is not None for r in rows.values() if r["raw_caption"])


def test_other_caption_settings_are_refused_then_redone_with_overwrite(shard_dir, tiny_models, tmp_path, capsys):
    a = tmp_path / "a"
    args = ["caption", shard_dir / "00000.tar", "-o", a, "-c", tiny_models["blip"], "-q"]
    assert cli(*args, "--max-new-tokens", 3) == 0
    before = (a / "00000.parquet").read_bytes()
    assert cli(*args, "--max-new-tokens", 5) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0] and "--overwrite" in err[0]
    assert "decoding.max_new_tokens 3 -> 5" in err[0]  # only what differs, was and now
    assert (a / "00000.parquet").read_bytes() == before
    assert cli(*args, "--max-new-tokens", 3, "--json") == 0  # the same command: nothing to redo
    assert json.loads(capsys.readouterr().out)["shards"]["skipped"] == 1
    assert cli(*args, "--max-new-tokens", 5, "--overwrite") == 0
    meta = ann.read_metadata(str(a / "00000.parquet"))
    assert meta["groups"]["captions"]["decoding"]["max_new_tokens"] == 5
    assert json.loads((a / folders.RECORD).read_text())["groups"]["captions"]["decoding"]["max_new_tokens"] == 5


def test_score_with_another_clip_model_is_refused(shard_dir, tiny_models, tmp_path, capsys):
    a = tmp_path / "a"
    one = shard_dir / "00000.tar"
    assert cli("score", one, "-a", a, "--clip-model", tiny_models["clip"], "--no-sieve", "-q") == 0
    assert cli("score", one, "-a", a, "--clip-model", tiny_models["clip"], "--clip-pretrained", "x.pt",
               "--no-sieve", "-q") == 2
    assert "clip written with other settings" in capsys.readouterr().err


@pytest.mark.parametrize("args,msg", [
    (["caption", "{s}", "-o", "{out}", "-c", "sieeve"], "unknown captioner 'sieeve'"),
    (["caption", "{s}", "-o", "{out}", "-c", "qwen2.5-vl-3b"], "recaption[vllm]"),
    (["caption", "{s}", "-o", "{out}", "-c", "blip-base", "--device", "cuda"], "no CUDA GPU"),
    (["caption", "{s}", "-o", "{out}", "-c", "blip-base", "--quantize", "3bit"], "3bit"),
    (["annotate", "{s}", "-o", "{out}", "--batch-size", "0"], "--batch-size"),
    (["run", "sieve", "{s}", "-o", "{out}", "--set", "mix.fraction=1.5"], "fraction"),
    (["run", "sieve", "{s}", "-o", "{out}", "--set", "caption.decoding=x"], "unknown decoding strategy 'x'"),
    (["run", "sieve", "{s}", "-o", "{out}", "--set", "caption.colour=red"], "unknown captioner setting 'colour'"),
    (["mix", "{s}", "-a", "{tmp}/no-annotations", "-o", "{out}", "--strategy", "raw"], "no annotation file"),
    (["annotate", "{s}", "-o", "{out}", "--engine", "ray", "--actor-gpus", "0.5", "--no-sieve",
      "-c", "{blip}", "--clip-model", "{clip}"], "GPU"),
])
def test_mistakes_fail_before_anything_is_created(args, msg, shard_dir, tiny_models, tmp_path, capsys):
    (tmp_path / "no-annotations").mkdir()
    subs = {"{s}": str(shard_dir), "{out}": str(tmp_path / "out"), "{tmp}": str(tmp_path),
            "{blip}": tiny_models["blip"], "{clip}": tiny_models["clip"]}
    argv = [next((a.replace(k, v) for k, v in subs.items() if k in a), a) for a in args]
    assert cli(*argv, "-q") == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("recaption: error")]
    assert len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "out").exists()
    assert list((tmp_path / "no-annotations").iterdir()) == []


def test_changing_only_the_mix_of_a_run_reuses_its_annotations(shard_dir, tiny_models, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["run", "datacomp-clip", shard_dir, "-o", out, "--set", f"clip.model={tiny_models['clip']}", "-q"]
    assert cli(*base) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "_annotations").glob("*.parquet")}
    assert cli(*base, "--set", "mix.fraction=0.5") == 2
    err = capsys.readouterr().err
    assert "only the mix settings differ" in err
    assert cli(*base, "--set", "mix.fraction=0.5", "--overwrite", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["annotate"]["shards"]["skipped"] == 3 and summary["fraction"] == 0.5
    assert {p.name: p.stat().st_mtime_ns for p in (out / "_annotations").glob("*.parquet")} == stamps


# -- a folder written before the captions group recorded its template's text ----------------------
def _serves_chat_echo(model: str) -> bool:
    return model.startswith("chat-echo:")


@pytest.fixture
def chat_echo():
    """The toy echo captioner declared as a chat backend (it takes --template and engine_args), so
    the captions group records `template_sha256` without a VLM."""
    from recaption.captioners.base import BACKENDS, Backend

    BACKENDS.register("chat-echo", Backend("tests.toys.echo:Echo", serves=_serves_chat_echo, chat=True,
                                           engine_args=True))
    yield "chat-echo:toy"
    BACKENDS.unregister("chat-echo")


def _as_older_recaption_wrote(folder, shard_names):
    """Drop the settings keys an older recaption did not record from the folder's record and the files."""
    import pyarrow.parquet as pq

    from recaption.annotators import get

    added = get("captions").added_settings
    record = json.loads((folder / folders.RECORD).read_text())
    for key in added:
        del record["groups"]["captions"][key]
    (folder / folders.RECORD).write_text(json.dumps(record))
    for name in shard_names:
        f = folder / f"{name}.parquet"
        t = pq.read_table(f)
        meta = ann.metadata(t)
        for key in added:
            del meta["groups"]["captions"][key]
        pq.write_table(t.replace_schema_metadata({ann.META_KEY: json.dumps(meta).encode()}), f)


def _state(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_resumed_older_folder_refuses_an_edited_template_before_any_shard(shard_dir, chat_echo, tmp_path,
                                                                             capsys, caplog):
    """An older folder (no template digest recorded) resumed with template T: the files written then
    record T's digest, so a later run with T edited (or another template) is refused in one line
    before any shard is read, creating and changing nothing, rather than failing shard by shard
    (and writing the unfinished shards with the new template)."""
    import logging

    a, template = tmp_path / "a", tmp_path / "mine.txt"
    template.write_text("<image>\nDescribe the image.")
    run = ["caption", "-o", a, "-c", chat_echo, "--template", template, "-q"]
    assert cli(run[0], shard_dir / "00000.tar", *run[1:]) == 0
    _as_older_recaption_wrote(a, ["00000"])
    with caplog.at_level(logging.WARNING, logger="recaption"):
        assert cli(run[0], shard_dir / "00001.tar", *run[1:]) == 0  # resumed: 00001 written now, 00002 not yet
    assert any("recorded without template_sha256" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in a.glob("*.parquet")) == ["00000.parquet", "00001.parquet"]
    before = _state(a)
    template.write_text("<image>\nDescribe the image in detail.")
    for other in (template, "alt-text"):  # the file edited, or another template named
        capsys.readouterr()
        assert cli(run[0], shard_dir, *run[1:5], "--template", other, "-q", "--json") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds captions written with other settings" in err[0], err
        assert "template" in err[0] and "--overwrite" in err[0]
        assert _state(a) == before  # nothing created (00002) or changed
    caplog.clear()
    template.write_text("<image>\nDescribe the image.")  # T again: resumes, still saying what is unknown
    with caplog.at_level(logging.WARNING, logger="recaption"):
        assert cli(run[0], shard_dir, *run[1:]) == 0
    assert any("recorded without template_sha256" in r.getMessage() for r in caplog.records)
    assert (a / "00000.parquet").read_bytes() == before["00000.parquet"]
    assert (a / "00001.parquet").read_bytes() == before["00001.parquet"]


def test_the_record_says_which_keys_older_files_lack_until_overwrite_redoes_every_file(shard_dir, chat_echo,
                                                                                     tmp_path, caplog):
    """The record keeps naming the keys older files lack (so each resume warns) through an
    --overwrite of some shards only, and stops once every file of the folder is redone."""
    import logging

    from recaption.captioners.chat import load_template

    a = tmp_path / "a"
    run = ["caption", "-o", a, "-c", chat_echo, "--template", "alt-text", "-q"]
    assert cli(run[0], shard_dir, *run[1:]) == 0
    _as_older_recaption_wrote(a, ["00000", "00001", "00002"])
    assert cli(run[0], shard_dir, *run[1:]) == 0
    record = json.loads((a / folders.RECORD).read_text())
    assert record[folders.UNRECORDED] == {"captions": ["template_sha256", "engine_args"]}
    assert record["groups"]["captions"]["template_sha256"] == load_template("alt-text").digest()
    assert cli(run[0], shard_dir / "00001.tar", *run[1:], "--overwrite") == 0  # 00000 and 00002 still lack them
    assert json.loads((a / folders.RECORD).read_text())[folders.UNRECORDED] == record[folders.UNRECORDED]
    assert "template_sha256" not in ann.read_metadata(str(a / "00000.parquet"))["groups"]["captions"]
    assert "template_sha256" in ann.read_metadata(str(a / "00001.parquet"))["groups"]["captions"]
    assert cli("caption", shard_dir, "-o", a, "-c", "none", "-q", "--overwrite") == 0  # other groups redone
    assert json.loads((a / folders.RECORD).read_text())[folders.UNRECORDED] == record[folders.UNRECORDED]
    assert cli(run[0], shard_dir, *run[1:], "--overwrite") == 0
    assert folders.UNRECORDED not in json.loads((a / folders.RECORD).read_text())
    assert all("template_sha256" in ann.read_metadata(str(f))["groups"]["captions"] for f in a.glob("*.parquet"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recaption"):
        assert cli(run[0], shard_dir, *run[1:]) == 0
    assert not [r for r in caplog.records if "recorded without" in r.getMessage()]
