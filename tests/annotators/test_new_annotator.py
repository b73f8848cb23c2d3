"""Issue 24: a new annotator is one module plus its registration. The toy `brightness` annotator
(tests/annotators/brightness.py) flows through annotate, resume refusal, the report's histograms,
`--filter` and recipes with no edit anywhere else."""
from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from recaption import annotators
from recaption.demo.samples import write_tar
from tests.annotators.brightness import Brightness
from tests.helpers import cli


def _jpeg(level: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (level, level, level)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def brightness():
    annotators.register(Brightness)
    yield Brightness
    annotators.unregister("brightness")


@pytest.fixture
def shards(tmp_path):
    levels = {"dark": 10, "mid": 128, "light": 245}
    samples = [(k, {"jpg": _jpeg(v), "txt": f"a {k} picture".encode(), "json": b'{"uid": "x"}'})
               for k, v in levels.items()]
    samples.append(("broken", {"jpg": b"not an image", "txt": b"broken"}))
    write_tar(tmp_path / "in" / "00000.tar", samples)
    return tmp_path / "in", levels


def _rows(ann_dir):
    t = pq.read_table(ann_dir / "00000.parquet")
    return {r["key"]: r for r in t.to_pylist()}, json.loads(t.schema.metadata[b"recaption"])["groups"]


def test_the_cli_learns_its_options_and_rules(brightness, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert cli("score", "--help") == 0
    assert "--brightness-size" in capsys.readouterr().out
    assert cli("mix", "--help") == 0
    assert "min-brightness=X" in capsys.readouterr().out


def test_registration_is_checked(brightness):
    with pytest.raises(Exception, match="registered already"):
        annotators.register(Brightness)
    assert "brightness" in annotators.names() and "min-brightness" in annotators.rule_kinds()
    with pytest.raises(Exception, match="built in"):
        annotators.unregister("clip")


def test_the_toy_annotator_flows_through_every_verb(brightness, shards, tmp_path, capsys):
    src, levels = shards
    ann = tmp_path / "ann"
    # annotate: its option is on the CLI, its column and settings land in the file
    assert cli("score", src, "-a", ann, "--no-clip", "--no-sieve", "--brightness", "-q") == 0
    rows, groups = _rows(ann)
    assert groups["brightness"] == {"brightness_size": 32}
    for k, v in levels.items():
        assert abs(rows[k]["brightness"] - v) < 3, (k, rows[k]["brightness"])
    assert rows["broken"]["status"] == "error" and rows["broken"]["brightness"] is None
    assert "metrics" in groups  # the always-on group still comes with it

    # resume refusal: other settings are refused, --overwrite redoes them; the same ones are skipped
    assert cli("score", src, "-a", ann, "--no-clip", "--no-sieve", "--brightness", "--brightness-size", 8, "-q") == 2
    err = capsys.readouterr().err
    assert "brightness written with other settings (brightness_size 32 -> 8)" in err  # only what differs
    assert cli("score", src, "-a", ann, "--no-clip", "--no-sieve", "--brightness", "--brightness-size", 8,
               "--overwrite", "-q") == 0
    assert _rows(ann)[1]["brightness"] == {"brightness_size": 8}

    # --filter: its rule, at its boundary, with the row's value in the reason
    capsys.readouterr()
    assert cli("mix", src, "-a", ann, "-o", tmp_path / "out", "--strategy", "raw",
               "--filter", "min-brightness=100", "-q") == 0
    drops = {r["key"]: r["reason"] for r in pq.read_table(tmp_path / "out" / "_dropped.parquet").to_pylist()}
    assert set(drops) == {"dark", "broken"} and drops["dark"].startswith("filter: min-brightness 10")
    assert drops["dark"].endswith("< 100")

    # a custom rule is evaluated by the test its kind names, reading only the columns it declares
    # (an unknown custom rule once fell through to a CLIP floor scoped by `lang`, a column not read)
    assert cli("mix", src, "-a", ann, "-o", tmp_path / "glare", "--strategy", "raw",
               "--filter", "max-glare=100", "-q") == 0
    drops = {r["key"]: r["reason"] for r in pq.read_table(tmp_path / "glare" / "_dropped.parquet").to_pylist()}
    assert set(drops) == {"dark", "light", "broken"}, drops
    assert drops["dark"].startswith("filter: max-glare 11") and drops["dark"].endswith("> 100")
    assert drops["light"].startswith("filter: max-glare 11") and not drops["broken"].startswith("filter")

    # report: its histogram is drawn, with the rule's limit
    from recaption.report.data import load
    from recaption.report.html import render

    d = load(tmp_path / "out")
    assert int(d.hists["brightness"]["mean brightness"].sum()) == 3
    page = render(d, tmp_path / "report")
    assert (tmp_path / "report" / "brightness.png").is_file() and "brightness.png" in page.read_text()


def test_a_folder_without_the_group_is_one_line_naming_how_to_add_it(brightness, shards, tmp_path, capsys):
    src, _ = shards
    ann = tmp_path / "ann"
    assert cli("score", src, "-a", ann, "--no-clip", "--no-sieve", "-q") == 0
    capsys.readouterr()
    assert cli("mix", src, "-a", ann, "--strategy", "raw", "--filter", "min-brightness=1", "--dry-run") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no brightness columns" in err[0] and "--brightness" in err[0]


def test_a_recipe_takes_its_section(brightness, shards, tmp_path):
    src, _ = shards
    recipe = tmp_path / "r.yaml"
    recipe.write_text("captioner: null\nclip: null\nsieve: null\nbrightness: {brightness_size: 16}\n"
                      "filters: {min-brightness: 200}\nmix: {strategy: raw}\n")
    assert cli("run", recipe, src, "-o", tmp_path / "out", "-q") == 0
    _, groups = _rows(tmp_path / "out" / "_annotations")
    assert groups["brightness"] == {"brightness_size": 16}
    kept = json.loads((tmp_path / "out" / "_summary.json").read_text())["counts"]["written"]
    assert kept == 1  # only the light picture passes
    recipe.write_text("brightness: {size: 16}\nmix: {strategy: raw}\n")
    assert cli("run", recipe, src, "-o", tmp_path / "out2", "-q") == 2


@pytest.mark.slow
def test_worker_processes_and_ray_tasks_learn_an_annotator_registered_at_run_time(brightness, shards, tmp_path,
                                                                                  ray_local):
    """The registration happened in this process only: spawned workers learn the annotator from the
    work they are handed, Ray tasks evaluate its filter rule from the rule itself."""
    src, levels = shards
    ann = tmp_path / "ann"
    assert cli("score", src, "-a", ann, "--no-clip", "--no-sieve", "--brightness", "--workers", 2, "-q") == 0
    rows, groups = _rows(ann)
    assert groups["brightness"] == {"brightness_size": 32} and abs(rows["light"]["brightness"] - 245) < 3
    out = tmp_path / "out"
    assert cli("mix", src, "-a", ann, "-o", out, "--strategy", "raw", "--filter", "min-brightness=100",
               "--engine", "ray", "-q") == 0
    drops = {r["key"] for r in pq.read_table(out / "_dropped.parquet").to_pylist()}
    assert drops == {"dark", "broken"}
