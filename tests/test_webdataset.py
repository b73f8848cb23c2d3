"""Reading INPUT through an overlay (`mix --overlay`) gives what the mixed tars (`mix -o`) hold:
the same samples, keys and members byte for byte, through webdataset (in-process, DataLoader
workers, shuffled, resampled) and Ray Data; and it fails loudly where it cannot know."""
import os
import shutil
from itertools import islice

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds

from recaption import api
from recaption.engines import Execution
from recaption.errors import RecaptionError
from recaption.mixing.strategies import MixConfig
from recaption.webdataset import overlay, ray_dataset, ray_overlay
from tests.helpers import annotate_randomly, plain, rerecord_decisions, urls

QUIET = Execution(quiet=True)
CONFIGS = {
    "raw": MixConfig("raw", fraction=0.6, samples_per_shard=4),
    "synthetic": MixConfig("synthetic", threshold=0.2, samples_per_shard=4),
    "threshold": MixConfig("threshold", fraction=0.3, filter_synthetic=True, samples_per_shard=4),
    "both": MixConfig("both", fraction=0.5, samples_per_shard=4),
    "sieve": MixConfig("sieve", fraction=0.5, samples_per_shard=4),
    # a filter's drops are decisions like the strategy's: the overlay leaves them out too
    "filtered": MixConfig("both", fraction=0.5, samples_per_shard=4, filters=["min-clip-raw=0.2"]),
    # every caption under a json key of its own: the overlay writes the same keys, byte for byte
    "keys-best": MixConfig("threshold", fraction=0.3, samples_per_shard=4, caption_keys="best"),
    "keys-all": MixConfig("both", fraction=0.5, samples_per_shard=4, caption_keys="all"),
}


@pytest.fixture(scope="module")
def mixes(shard_dir, tmp_path_factory):
    """strategy -> (materialised mix folder, overlay folder), over the same annotations."""
    root = tmp_path_factory.mktemp("overlay")
    ann = annotate_randomly(shard_dir, root / "ann")
    out = {}
    for name, cfg in CONFIGS.items():
        full, ov = root / f"mix-{name}", root / f"overlay-{name}"
        api.mix(str(shard_dir), str(ann), str(full), cfg, execution=QUIET)
        s = api.mix(str(shard_dir), str(ann), str(ov), cfg, overlay=True, execution=QUIET)
        assert s["overlay"] and s["counts"]["written"] > 0 and s["counts"]["dropped"] > 0
        assert any(r.startswith("filter") for r in s["counts"]["dropped_by_reason"]) == bool(cfg.filters)
        out[name] = (full, ov)
    return out


def materialised(full) -> list[dict]:
    return [plain(s) for s in wds.WebDataset(urls(full), shardshuffle=False)]


def by_key(samples) -> dict:
    out = {}
    for s in samples:
        assert s["__key__"] not in out, f"{s['__key__']} read twice"
        out[s["__key__"]] = s
    return out


@pytest.mark.parametrize("strategy", list(CONFIGS))
def test_webdataset_through_the_overlay_is_the_mixed_shards(shard_dir, mixes, strategy):
    full, ov = mixes[strategy]
    assert not list(ov.glob("*.tar")) and sorted(p.name for p in ov.iterdir()) == [
        "_decisions", "_dropped.parquet", "_recaption.json", "_summary.json"]
    want = materialised(full)
    assert want and all(set(s) >= {"txt", "json"} for s in want)
    got = [plain(s) for s in wds.WebDataset(urls(shard_dir), shardshuffle=False).compose(overlay(str(ov)))]
    assert got == want  # same samples in the same order, every member byte for byte
    if strategy == "both":
        assert any("syn.txt" in s for s in got) and all(("syn.txt" in s) == ("syn.txt" in w) for s, w in zip(got, want))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("strategy", list(CONFIGS))
def test_dataloader_workers_read_the_mixed_samples(shard_dir, mixes, strategy, workers):
    full, ov = mixes[strategy]
    ds = wds.WebDataset(urls(shard_dir), shardshuffle=False).compose(overlay(str(ov)))
    got = [plain(s) for s in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)]
    assert by_key(got) == by_key(materialised(full))


def test_shuffled_resampled_pipeline_with_decoding(shard_dir, mixes):
    """Resampled shards, a shuffle buffer and decoding after the overlay, in a DataPipeline with
    two workers: every sample is a mixed one, decoded as the mixed tars decode."""
    full, ov = mixes["both"]
    want = {s["__key__"]: plain(s) for s in wds.WebDataset(urls(full), shardshuffle=False).decode()}
    ds = wds.DataPipeline(wds.ResampledShards(urls(shard_dir)), wds.tarfile_to_samples(), overlay(str(ov)),
                          wds.shuffle(20), wds.decode())
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    got = [plain(s) for s in islice(iter(loader), 60)]
    assert len(got) == 60 and len({s["__key__"] for s in got}) > len(want) // 2
    for s in got:
        assert s == want[s["__key__"]]
        assert isinstance(s["txt"], str) and s["json"]["recaption"]["strategy"] == "both"


def test_the_overlay_takes_decoded_samples_too(shard_dir, mixes):
    """Composed after .decode(): txt and syn.txt as text, json as the object the mixed json decodes to."""
    full, ov = mixes["both"]
    want = [plain(s) for s in wds.WebDataset(urls(full), shardshuffle=False).decode()]
    got = [plain(s) for s in wds.WebDataset(urls(shard_dir), shardshuffle=False).decode().compose(overlay(str(ov)))]
    assert got == want


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(CONFIGS))
def test_ray_data_through_the_overlay_is_the_mixed_shards(shard_dir, mixes, strategy, ray_local):
    import ray.data

    full, ov = mixes[strategy]
    ray.data.DataContext.get_current().enable_tensor_extension_casting = False
    want = [plain(r) for r in ray.data.read_webdataset(urls(full), decoder=None).take_all()]
    got = [plain(r) for r in ray_dataset(str(shard_dir), str(ov)).take_all()]
    assert by_key(got) == by_key(want) and len(got) == len(materialised(full))
    # the batch function on its own, over Ray's other batch formats
    for fmt in ("pyarrow", "numpy"):
        ds = ray.data.read_webdataset(urls(shard_dir), decoder=None).map_batches(ray_overlay(str(ov)),
                                                                                   batch_format=fmt)
        assert by_key(plain(r) for r in ds.take_all()) == by_key(want), fmt


# -- failing loudly ----------------------------------------------------------------------------
def _collect(ds):
    """Samples read until the error, and the error."""
    seen = []
    with pytest.raises(RecaptionError) as e:
        for s in ds:
            seen.append(s)
    return seen, str(e.value)


@pytest.fixture
def copy_of(shard_dir, tmp_path):
    d = tmp_path / "in"
    shutil.copytree(shard_dir, d)
    for src in shard_dir.glob("*.tar"):  # a copy with the originals' times: the same shards as far as mtime says
        st = src.stat()
        os.utime(d / src.name, ns=(st.st_atime_ns, st.st_mtime_ns))
    return d


def test_a_shard_without_decisions_fails_with_its_name_and_key(shard_dir, mixes, copy_of):
    _, ov = mixes["raw"]
    assert [plain(s) for s in wds.WebDataset(urls(copy_of), shardshuffle=False).compose(overlay(str(ov)))]
    shutil.copy(copy_of / "00001.tar", copy_of / "00007.tar")  # a shard the mix never saw
    seen, err = _collect(wds.WebDataset(urls(copy_of), shardshuffle=False).compose(overlay(str(ov))))
    assert "00007.tar" in err and "'000010000'" in err and "no decisions file" in err
    assert {s["__url__"] for s in seen} <= {str(copy_of / f"0000{i}.tar") for i in range(3)}


def test_a_key_the_decisions_do_not_know_fails(mixes, copy_of, tmp_path):
    _, ov = mixes["synthetic"]
    edited = tmp_path / "ov"
    shutil.copytree(ov, edited)
    path = edited / "_decisions" / "00001.parquet"
    t = pq.read_table(path)
    pq.write_table(t.filter(pc.not_equal(t["key"], "000010003")), path)  # schema metadata (the shard's identity) kept
    rerecord_decisions(edited)  # the summary edited too: past the digest, the reader still knows no such key
    seen, err = _collect(wds.WebDataset(urls(copy_of), shardshuffle=False).compose(overlay(str(edited))))
    assert "00001.tar" in err and "'000010003'" in err
    assert not any(s["__key__"] == "000010003" for s in seen)


def test_a_changed_shard_is_refused_before_any_of_its_samples(mixes, copy_of):
    _, ov = mixes["threshold"]
    target = copy_of / "00001.tar"
    target.write_bytes(target.read_bytes() + b"\0" * 1024)  # one more tar block: size changes
    seen, err = _collect(wds.WebDataset(urls(copy_of), shardshuffle=False).compose(overlay(str(ov))))
    assert "00001.tar" in err and "changed" in err and "size" in err
    assert "sample '000010000'" in err  # the first sample read from it
    assert seen and not any(s["__url__"] == str(target) for s in seen)


def test_a_touched_shard_is_refused_unless_sizes_only_are_asked(mixes, copy_of):
    _, ov = mixes["raw"]
    os.utime(copy_of / "00000.tar", (1_000_000_000, 1_000_000_000))
    seen, err = _collect(wds.WebDataset(urls(copy_of), shardshuffle=False).compose(overlay(str(ov))))
    assert seen == [] and "00000.tar" in err and "mtime" in err and "sample '000000000'" in err
    ds = wds.WebDataset(urls(copy_of), shardshuffle=False).compose(overlay(str(ov), verify="size"))
    assert [plain(s) for s in ds] == materialised(mixes["raw"][0])


def test_errors_cross_dataloader_workers(mixes, copy_of):
    _, ov = mixes["raw"]
    shutil.copy(copy_of / "00002.tar", copy_of / "00009.tar")
    ds = wds.WebDataset(urls(copy_of), shardshuffle=False).compose(overlay(str(ov)))
    with pytest.raises(RecaptionError, match="00009.tar"):
        list(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2))


@pytest.mark.slow
def test_ray_data_refuses_a_shard_without_decisions(mixes, copy_of, ray_local):
    _, ov = mixes["raw"]
    shutil.copy(copy_of / "00002.tar", copy_of / "00009.tar")
    with pytest.raises(Exception, match=r"00009\.tar.*no decisions file"):
        ray_dataset(str(copy_of), str(ov)).take_all()


def test_only_a_finished_mix_folder_is_an_overlay(shard_dir, mixes, tmp_path):
    with pytest.raises(RecaptionError, match="not a mix overlay"):
        overlay(str(tmp_path))
    _, ov = mixes["raw"]
    unfinished = tmp_path / "ov"
    shutil.copytree(ov, unfinished)
    (unfinished / "_summary.json").unlink()
    with pytest.raises(RecaptionError, match="has not finished"):
        overlay(str(unfinished))
    full, _ = mixes["raw"]  # a materialised mix keeps its decisions: they read the same way
    got = [plain(s) for s in wds.WebDataset(urls(shard_dir), shardshuffle=False).compose(overlay(str(full)))]
    assert got == materialised(full)


def test_odd_json_reads_as_the_mixed_shards_hold_it(tmp_path):
    """Samples whose json is not plain (NaN, a recaption field, one spelled with escapes, escaped
    text, none at all, whitespace around it) and samples without txt: read through the overlay,
    the same bytes as the mixed shards."""
    from recaption.demo.samples import make_sample, write_tar

    import random

    rng = random.Random(3)
    odd = [b'{"url": "u", "x": NaN, "y": [Infinity]}', b'{"recaption": 5, "z": 2}', b'{"\\u0072ecaption": 1}',
           b'{"recaption_raw": "old", "recaption_candidate_0": 1}', b'{"\\u0072ecaption_synthetic": null}',
           b'{"caption": "caf\\u00e9 \\"q\\" \\\\ \\n", "n": -0.0}', None, b'  {"a": {"b": []}}  \n', b"{}",
           b'{"note": "recaption is a word"}']
    samples = []
    for i in range(24):
        key = f"odd{i:03d}"
        m = make_sample(rng, key)
        text = odd[i % len(odd)]
        if text is None:
            m.pop("json")
        else:
            m["json"] = text
        if i % 5 == 4:
            m.pop("txt")
        samples.append((key, m))
    shards = tmp_path / "in"
    write_tar(shards / "00000.tar", samples[:12])
    write_tar(shards / "00001.tar", samples[12:])
    ann = annotate_randomly(shards, tmp_path / "ann", seed=11)
    for strategy, keys in (("both", "none"), ("synthetic", "none"), ("synthetic", "all"), ("both", "best")):
        cfg = MixConfig(strategy, samples_per_shard=5, caption_keys=keys)
        full, ov = tmp_path / f"mix-{strategy}-{keys}", tmp_path / f"ov-{strategy}-{keys}"
        api.mix(str(shards), str(ann), str(full), cfg, execution=QUIET)
        api.mix(str(shards), str(ann), str(ov), cfg, overlay=True, execution=QUIET)
        want = materialised(full)
        got = [plain(s) for s in wds.WebDataset(urls(shards), shardshuffle=False).compose(overlay(str(ov)))]
        assert got == want and len(want) > 8
        assert {s["json"][:12] for s in got} >= {b'{"url": "u",', b'{"recaption"', b'{"caption": '}
