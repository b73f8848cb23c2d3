"""The filter recipes run end to end on the bundled sample shards: every sample is written or
dropped with a reason naming a rule, and changing only the rules redoes only the mix."""
import json

import pyarrow.parquet as pq

from recaption.resources import sample_shards_dir
from tests.helpers import dropped, input_samples, read_output, summary
from tests.helpers import cli


def _accounted(out):
    inputs = set(input_samples(sample_shards_dir()))
    kept, drops = set(read_output(out)), {k: r for (k, _), r in dropped(out).items()}
    assert kept.isdisjoint(drops) and kept | set(drops) == inputs  # every sample in exactly one place
    return kept, drops


def test_datacomp_basic_on_the_sample_shards(tmp_path):
    out = tmp_path / "out"
    assert cli("run", "datacomp-basic", sample_shards_dir(), "-o", out, "-q") == 0  # no model: metrics only
    kept, drops = _accounted(out)
    s = summary(out)
    assert kept and drops and all(r.startswith("filter: ") for r in drops.values())
    assert [f["rule"] for f in s["filters"]] == ["english", "min-words=3", "min-chars=6", "min-side=200",
                                                "max-aspect=3"]
    assert sum(f["dropped"] for f in s["filters"]) == len(drops)
    # the bundled samples record an original size of 384 x 384: the image rules pass them all
    assert all(f["dropped"] == 0 for f in s["filters"][3:])
    groups = json.loads((out / "_annotations" / "_recaption.json").read_text())["groups"]
    assert set(groups) == {"metrics", "fingerprints"}  # what every pass computes, no model
    # only the rules change: the annotations are kept, the mix is redone
    before = {p.name: p.stat().st_mtime_ns for p in (out / "_annotations").glob("*.parquet")}
    assert cli("run", "datacomp-basic", sample_shards_dir(), "-o", out, "--set", "filters.min-side=500",
               "--overwrite", "-q") == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "_annotations").glob("*.parquet")} == before
    kept2, drops2 = _accounted(out)
    assert not kept2 and any(r == "filter: min-side 384 < 500" for r in drops2.values())


def test_laion_5b_on_the_sample_shards(tmp_path, tiny_models):
    """The recipe end to end with tiny models: the filters, exact duplicates removed, and LAION's two
    tags as columns and json keys (the published head architectures, random weights)."""
    import webdataset as wds

    from tests.helpers import tiny_tag_heads

    out = tmp_path / "out"
    heads = tiny_tag_heads(tmp_path / "heads")
    # tiny random CLIP scores sit around 0, and the sample JPEGs are about 1.4 KB: limits moved to suit
    sets = [f"clip.model={tiny_models['clip']}", "filters.min-image-bytes=1000", "filters.min-clip-raw-en=-0.1",
            "filters.min-clip-raw-other=-0.2", f"punsafe.head={heads['punsafe']}",
            f"pwatermark.weights={heads['pwatermark']}"]
    assert cli("run", "laion-5b", sample_shards_dir(), "-o", out, *[x for s in sets for x in ("--set", s)], "-q") == 0
    kept, drops = _accounted(out)
    s = summary(out)
    assert [f["rule"] for f in s["filters"]] == ["min-chars=5", "min-image-bytes=1000", "min-clip-raw-en=-0.1",
                                                "min-clip-raw-other=-0.2"]
    assert kept and all(r.startswith("filter: ") for r in drops.values())
    groups = json.loads((out / "_annotations" / "_recaption.json").read_text())["groups"]
    assert {"punsafe", "pwatermark", "fingerprints"} <= set(groups)
    assert [d["rule"] for d in s["dedup"]] == ["exact"] and s["json_tags"] == ["punsafe", "pwatermark"]
    tags = {r["key"]: r for p in (out / "_annotations").glob("0*.parquet") for r in pq.read_table(p).to_pylist()}
    urls = sorted(str(p) for p in out.glob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == len(kept)
    for smp in samples:
        j = json.loads(smp["json"])
        assert j["punsafe"] == tags[smp["__key__"]]["punsafe"] and j["pwatermark"] == tags[smp["__key__"]]["pwatermark"]
    decided = pq.read_table(out / "_decisions" / "00000.parquet").to_pylist()
    for r in decided:
        if r["kept"]:
            assert r["raw_caption"] and len(r["raw_caption"]) >= 5 and r["clip_raw"] >= -0.2
