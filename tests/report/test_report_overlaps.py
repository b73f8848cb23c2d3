"""Issue 25.4: the report of a mix with --decontaminate lists its evaluation overlaps, each as the
pool sample's thumbnail beside the evaluation image it copies, and its duplicate rules; rendered in
headless Chromium, where every image loads."""
from __future__ import annotations

import re

import pytest
from PIL import Image

from recaption.report.data import load
from tests.helpers import PHOTOS, cli, find_chromium, photo_shards, render_dom, summary


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("report-overlaps")
    shards = photo_shards(root / "in")
    bench = root / "bench"
    bench.mkdir()
    for p in PHOTOS[:2]:  # astronaut and chelsea, re-encoded: pHash finds them and their copies
        Image.open(p).save(bench / f"{p.stem}.png")
    assert cli("score", shards, "-a", root / "ann", "--clip-model", tiny_models["clip"], "--no-sieve", "-q") == 0
    assert cli("mix", shards, "-a", root / "ann", "-o", root / "out", "--strategy", "raw", "--dedup", "exact,phash",
               "--decontaminate", bench, "-q") == 0
    return root


def test_the_report_reads_the_overlaps_and_their_images(mixed):
    d = load(mixed / "out")
    s = summary(mixed / "out")
    n = sum(v for k, v in s["counts"]["dropped_by_reason"].items() if k.startswith("overlap: "))
    assert n == d.overlaps_total == len(d.overlaps) == 12  # two photographs, each with its five copies
    assert {o["eval"] for o in d.overlaps} == {"bench/astronaut.png", "bench/chelsea.png"}
    assert all((o["shard"], o["key"]) in d.images for o in d.overlaps)
    assert set(d.eval_images) == {o["eval"] for o in d.overlaps}
    own = next(r for r in d.per_strategy if r["strategy"] == "raw")
    assert d.pooled == s["counts"]["written"] and own["dropped"] + own["kept"] == d.rows  # the mix's own pool


CHECK = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const pairs = [...document.querySelectorAll('.pair')].map(p => p.querySelectorAll('img').length);
  document.body.setAttribute('data-check', 'LOADED ' + ok + '/' + imgs.length + ' PAIRS ' + pairs.join(','));
});</script></body>"""


@pytest.mark.slow
def test_overlaps_render_side_by_side_in_chromium(mixed, tmp_path):
    chromium = find_chromium()
    if not chromium:
        pytest.skip("no Chromium and no way to install it (needs root and apt)")
    out = tmp_path / "report"
    assert cli("report", mixed / "out", "-o", out, "--input", mixed / "in") == 0
    page = (out / "index.html").read_text()
    assert "evaluation overlaps: pool sample, then the evaluation image (12)" in page
    assert "duplicates, after the filters" in page and "phash=8" in page
    (out / "check.html").write_text(page.replace("</body>", CHECK))
    p = render_dom(chromium, out / "check.html", tmp_path / "profile")
    m = re.search(r"LOADED (\d+)/(\d+) PAIRS ([\d,]*)", p.stdout)
    assert m, p.stderr[-2000:]
    assert int(m.group(1)) == int(m.group(2))
    assert [int(x) for x in m.group(3).split(",")] == [2] * 12  # each overlap: pool image and EVAL image
