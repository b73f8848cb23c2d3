"""Issue 31.3 and 32.8: the report's folder is one recaption owns (a record, refusals, whole files,
only its own files removed), thumbnails are named by shard and key, grids say how many they show
of how many, and count axes are whole numbers."""
import io
import json
import re

import pytest
from PIL import Image

from recaption.io import folders
from recaption.report import html as report_html
from tests.helpers import cli, jpeg

COLOURS = {"a": (220, 30, 30), "b": (30, 30, 220)}  # shard -> the colour of every image in it
KEYS = [f"{i:04d}" for i in range(4)]  # the same keys in both shards


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_models):
    from recaption.demo.samples import write_tar

    root = tmp_path_factory.mktemp("report-folder")
    shards = root / "shards"
    shards.mkdir()
    for shard, colour in COLOURS.items():
        img = jpeg(Image.new("RGB", (64, 48), colour))
        write_tar(shards / f"{shard}.tar", [(k, {"jpg": img, "txt": f"a photo number {k}".encode(),
                                                  "json": json.dumps({"key": k}).encode()}) for k in KEYS])
    ann = root / "ann"
    assert cli("score", shards, "-a", ann, "--clip-model", tiny_models["clip"], "--no-sieve", "-q") == 0
    return shards, ann


def _tree(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_thumbnails_are_named_by_shard_and_show_their_own_shards_image(pool, tmp_path):
    shards, ann = pool
    out = tmp_path / "report"
    assert cli("report", ann, "--input", shards, "-o", out) == 0
    page = (out / "index.html").read_text()
    cards = re.findall(r'<div class="card"><img src="([^"]+)" alt="([^"]+)"><div class="k">([^ ]+) · ([^<]+)</div>',
                       page)
    assert {shard for *_, shard in cards} == set(COLOURS), cards  # both shards' same keys are shown
    for src, _, key, shard in cards:
        assert src == f"img/{shard}/{key}.jpg"
        r, g, b = Image.open(out / src).convert("RGB").resize((1, 1)).getpixel((0, 0))
        want = COLOURS[shard]
        assert abs(r - want[0]) < 40 and abs(b - want[2]) < 40, (src, (r, g, b))


def test_each_grid_says_how_many_it_shows_of_how_many(pool, tmp_path):
    shards, ann = pool
    out = tmp_path / "report"
    assert cli("report", ann, "--input", shards, "-o", out) == 0
    page = (out / "index.html").read_text()
    n = len(COLOURS) * len(KEYS)
    for title in ("highest CLIP (raw)", "lowest CLIP (raw)", "random"):
        assert f"<h2>{title} (6 of {n} shown)</h2>" in page, title


def test_count_axes_are_whole_numbers(pool, monkeypatch, tmp_path):
    shards, ann = pool
    ticks = {}
    real = report_html._png

    def observed(fig):
        for ax in fig.axes:
            ticks[ax.get_title()] = list(ax.get_yticks())
        return real(fig)

    monkeypatch.setattr(report_html, "_png", observed)
    assert cli("report", ann, "-o", tmp_path / "report") == 0
    assert ticks and all(float(t).is_integer() for ts in ticks.values() for t in ts), ticks


@pytest.mark.parametrize("where", ["input", "ann", "theirs", "mixed"])
def test_report_refuses_folders_it_does_not_own(pool, where, tmp_path, capsys):
    shards, ann = pool
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "plot.png").write_bytes(b"someone's plot")
    (theirs / "index.html").write_text("someone's page")
    mixed = tmp_path / "mixed"
    assert cli("mix", shards, "-a", ann, "-o", mixed, "--strategy", "raw", "-q") == 0
    out = {"input": shards, "ann": ann, "theirs": theirs, "mixed": mixed}[where]
    before = _tree(tmp_path) | _tree(shards.parent)
    assert cli("report", ann, "--input", shards, "-o", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert _tree(tmp_path) | _tree(shards.parent) == before  # nothing removed, overwritten or created


def test_a_report_replaces_only_its_own_earlier_files(pool, tmp_path):
    shards, ann = pool
    out = tmp_path / "report"
    assert cli("report", ann, "--input", shards, "-o", out) == 0
    rec = json.loads((out / folders.RECORD).read_text())
    assert rec["kind"] == "report" and "index.html" in rec["written"]
    assert set(rec["written"]) == {p.relative_to(out).as_posix() for p in out.rglob("*")
                                   if p.is_file() and p.name != folders.RECORD}
    (out / "mine.png").write_bytes(b"a plot of my own")  # never recorded: not the report's to remove
    (out / "img" / "notes.txt").write_text("mine too")
    (out / "old.png").write_bytes(b"an earlier report's plot")
    rec["written"].append("old.png")
    (out / folders.RECORD).write_text(json.dumps(rec))
    assert cli("report", ann, "-o", out) == 0  # no --input this time: no thumbnails
    assert (out / "mine.png").read_bytes() == b"a plot of my own" and (out / "img" / "notes.txt").exists()
    assert not (out / "old.png").exists() and not list(out.glob("img/*/*.jpg"))
    rec = json.loads((out / folders.RECORD).read_text())
    assert "old.png" not in rec["written"] and "mine.png" not in rec["written"]
    assert not list(out.rglob("*.tmp")) and not (out / folders.LOCK).exists()


def test_report_files_are_written_whole(pool, tmp_path, monkeypatch):
    """A report that fails while writing leaves the earlier page whole and no partial file."""
    shards, ann = pool
    out = tmp_path / "report"
    assert cli("report", ann, "--input", shards, "-o", out) == 0
    page = (out / "index.html").read_bytes()
    from recaption.io import atomic

    real, seen = atomic.write_bytes, []

    def failing(url, data):
        if url.endswith(".png") and seen:
            with atomic.atomic_open(url) as f:
                f.write(data[: len(data) // 2])
                raise OSError(28, "No space left on device")
        seen.append(url)
        return real(url, data)

    monkeypatch.setattr(atomic, "write_bytes", failing)
    assert cli("report", ann, "--input", shards, "-o", out) == 2
    assert (out / "index.html").read_bytes() == page  # index.html goes last: the old page stands
    for p in out.glob("*.png"):
        data = p.read_bytes()
        assert data.endswith(b"IEND\xaeB`\x82"), p  # every PNG under its final name is whole
        Image.open(io.BytesIO(data)).load()
    assert not list(out.rglob("*.tmp"))
