"""`recaption report` works on every folder recaption writes (annotations, a mix's output, a run's
output) and renders in headless Chromium: every image loads, every plot has data (coloured
pixels, not an empty frame), every sample grid shows cards."""
import json
import re
import shutil

import pytest

from recaption.report.data import load
from tests.helpers import cli, find_chromium, render_dom, variant_names

N = 18  # samples in the session's shard_dir


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if not path:
        pytest.skip("no Chromium and no way to install it (needs root and apt)")
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory, shard_dir, tiny_models, minilm):
    """One folder of each kind recaption writes, from the same shards."""
    root = tmp_path_factory.mktemp("report-folders")
    ann, mixed, run = root / "ann", root / "mixed", root / "run"
    assert cli("annotate", shard_dir, "-o", ann, "-c", "sieve", "--model", tiny_models["blip"], "--num-captions", 2,
               "--clip-model", tiny_models["clip"], "--sieve-model", minilm, "-q") == 0
    # `both` with a fraction (the strategy bar used to ignore it) and a filter rule
    assert cli("mix", shard_dir, "-a", ann, "-o", mixed, "--strategy", "both", "--fraction", 0.5,
               "--filter", "min-words=3", "-q") == 0
    sets = [f"caption.model={tiny_models['blip']}", "caption.num_captions=2", "caption.max_length=10",
            f"sieve.model={minilm}", f"clip.model={tiny_models['clip']}", "mix.fraction=0.5"]
    assert cli("run", "sieve", shard_dir, "-o", run, *[x for s in sets for x in ("--set", s)], "-q") == 0
    return {"annotations": ann, "mix": mixed, "run": run}


KINDS = ["annotations", "mix", "run"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_report_data_of_every_folder_kind(folders, shard_dir, kind):
    d = load(folders[kind], input_spec=str(shard_dir) if kind == "annotations" else None)
    assert d.kind == kind and d.rows == N and d.valid == N
    for name in ("clip", "sieve", "blend", "words", "side", "aspect", "chars", "kb"):
        assert sum(c.sum() for c in d.hists[name].values()) > 0, name
    assert sum(d.langs.values()) > 0
    shown = [r for r in d.per_strategy if "kept" in r]
    assert {r["strategy"] for r in shown} == set(variant_names())
    for r in shown:
        assert r["kept"] + r["dropped"] == N and r["kept"] == r["raw"] + r["synthetic"], r
    assert d.grids and all(d.grids.values())
    assert len(d.images) >= 6  # cards show their images: from the output tars or the input shards
    if kind != "annotations":  # the folder's own strategy is shown exactly as it was mixed
        s = json.loads((folders[kind] / "_summary.json").read_text())
        own = next(r for r in shown if r["strategy"] == s["strategy"])
        assert own["threshold"] == s["threshold"] and own["kept"] == s["counts"]["written"]
        assert (own["raw"], own["synthetic"]) == (s["counts"]["raw"], s["counts"]["synthetic"])


def test_mix_folder_shows_its_filters_and_fraction_for_both(folders):
    d = load(folders["mix"])
    s = json.loads((folders["mix"] / "_summary.json").read_text())
    assert [f["rule"] for f in d.filters] == ["min-words=3"] and d.filters == s["filters"]
    both = next(r for r in d.per_strategy if r["strategy"] == "both")
    assert both["threshold"] is not None and both["cut"]  # the fraction applies to `both`, as in mix
    assert d.pooled == N - d.filters[0]["dropped"]
    assert "dropped" in d.grids and all(r["reason"] for r in d.grids["dropped"])


def test_report_finds_moved_annotations_only_when_told(folders, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(folders["annotations"], moved)
    copy = tmp_path / "mixcopy"
    shutil.copytree(folders["mix"], copy)
    rec = json.loads((copy / "_recaption.json").read_text())
    rec["identity"]["annotations"] = "/nowhere/ann"
    (copy / "_recaption.json").write_text(json.dumps(rec))
    s = json.loads((copy / "_summary.json").read_text())
    s["annotations"] = "/nowhere/ann"
    (copy / "_summary.json").write_text(json.dumps(s))
    assert cli("report", copy, "-o", tmp_path / "r") == 2  # one line, naming the folder
    assert cli("report", copy, "-o", tmp_path / "r", "--annotations", moved) == 0


CHECK = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const plots = imgs.filter(i => i.getAttribute('src').endsWith('.png'));
  const ink = plots.map(im => {  // coloured pixels: bars and histograms; axes and text are grey
    const c = document.createElement('canvas'); c.width = im.naturalWidth; c.height = im.naturalHeight;
    const g = c.getContext('2d'); g.drawImage(im, 0, 0);
    const p = g.getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < p.length; i += 4) if (Math.max(p[i], p[i+1], p[i+2]) - Math.min(p[i], p[i+1], p[i+2]) > 40) n++;
    return im.getAttribute('src') + ':' + n;
  });
  const grids = [...document.querySelectorAll('.grid')].map(g => g.querySelectorAll('.card').length);
  document.body.setAttribute('data-check',
    'LOADED ' + ok + '/' + imgs.length + ' INK ' + ink.join(',') + ' GRIDS ' + grids.join(','));
});</script></body>"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_report_renders_in_chromium(folders, shard_dir, kind, tmp_path, chromium):
    out = tmp_path / "report"
    args = ["--input", shard_dir] if kind == "annotations" else []
    assert cli("report", folders[kind], "-o", out, *args) == 0
    page = (out / "index.html").read_text()
    assert "<pre>" not in page and "scored samples" not in page  # a table, not a JSON dump
    (out / "check.html").write_text(page.replace("</body>", CHECK))
    p = render_dom(chromium, out / "check.html", tmp_path / "profile")
    m = re.search(r"LOADED (\d+)/(\d+) INK (\S*) GRIDS ([\d,]*)", p.stdout)
    assert m, p.stderr[-2000:]
    ok, total = int(m.group(1)), int(m.group(2))
    ink = dict(x.rsplit(":", 1) for x in m.group(3).split(","))
    grids = [int(x) for x in m.group(4).split(",")]
    assert ok == total
    assert {"clip.png", "sieve.png", "blend.png", "words.png", "side.png", "aspect.png", "lang.png",
            "strategies.png"} <= set(ink)
    assert all(int(n) > 500 for n in ink.values()), ink  # every plot has data drawn in colour
    assert len(grids) >= 2 and all(n >= 1 for n in grids), grids
    assert total - len(ink) >= 6  # the cards' images
