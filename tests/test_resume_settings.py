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
