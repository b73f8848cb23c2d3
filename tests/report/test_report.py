"""`recaption report` renders in headless Chromium with every plot and sample image loaded."""
import os
import re
import shutil
import subprocess

import pytest

from recaption.report.data import load
from tests.test_end_to_end import cli


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() == 0 and shutil.which("apt-get"):  # the test set-up installs it where missing
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=600, check=False, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, timeout=900, check=False,
                           capture_output=True)
        except subprocess.TimeoutExpired:
            return None
        return shutil.which("chromium")
    return None


@pytest.fixture(scope="module")
def chromium():
    path = _chromium()
    if not path:
        pytest.skip("no Chromium and no way to install it (needs root and apt)")
    return path


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, shard_dir, tiny_models, minilm):
    out = tmp_path_factory.mktemp("mixed") / "out"
    sets = [f"caption.model={tiny_models['blip']}", "caption.num_captions=2", "caption.max_length=10",
            f"sieve.model={minilm}", f"clip.model={tiny_models['clip']}", "mix.fraction=0.5"]
    assert cli("run", "sieve", shard_dir, "-o", out, *[x for s in sets for x in ("--set", s)], "-q") == 0
    return out


def test_report_data(mixed):
    d = load(mixed)
    assert len(d.rows) == 18 and set(d.per_strategy) == {"raw", "synthetic", "threshold", "both", "sieve"}
    for s, c in d.per_strategy.items():
        assert sum(c.values()) == 18, s
    assert d.thresholds["blend"] == d.summary["threshold"]
    assert len(d.images) >= 12  # highest, lowest, random picks, read from the input shards


CHECK = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-check', 'LOADED ' + ok + '/' + imgs.length);
});</script></body>"""


def test_report_renders_in_chromium_with_every_image(mixed, tmp_path, chromium):
    out = tmp_path / "report"
    assert cli("report", mixed, "-o", out) == 0
    page = (out / "index.html").read_text()
    (out / "check.html").write_text(page.replace("</body>", CHECK))
    p = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--no-first-run", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files",
                        "--virtual-time-budget=5000", "--dump-dom", (out / "check.html").as_uri()],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"LOADED (\d+)/(\d+)", p.stdout)
    assert m, p.stderr[-2000:]
    ok, total = int(m.group(1)), int(m.group(2))
    assert total >= 5 + 12 and ok == total  # 5 plots + the sample grid
    assert len(re.findall(r'<div class="card">', page)) == 18
