"""What an overlay reader hands a trainer beyond the mixed bytes: decoded samples with the types
decoding the mixed shards gives (whatever members a sample lacked), and `txt` chosen among the
caption keys per sample and epoch, the same in any worker and in Ray Data."""
import multiprocessing
import random
from collections import Counter

import pytest
import torch
import webdataset as wds

from recaption import api
from recaption.engines import Execution
from recaption.errors import RecaptionError
from recaption.mixing.strategies import MixConfig
from recaption.webdataset import overlay, ray_overlay
from tests.helpers import annotate_by_captioners
from tests.helpers import config_for, plain, strategy_names, urls

QUIET = Execution(quiet=True)
# every registered strategy (a threshold where one is needed; threshold's lower, so its fallback shows)
STRATEGIES = {s: config_for(s, 0.4 if s == "threshold" else 0.7) for s in strategy_names()}


@pytest.fixture(scope="module")
def lacking(tmp_path_factory):
    """Shards whose samples lack txt, json or both (never the first of a shard), annotated."""
    from recaption.demo.samples import make_sample, write_tar

    root = tmp_path_factory.mktemp("lacking")
    rng = random.Random(5)
    for shard in range(3):
        samples = []
        for i in range(12):
            key = f"{shard:05d}{i:04d}"
            m = make_sample(rng, key)
            if i % 4 in (1, 3):
                m.pop("txt")
            if i % 4 in (2, 3):
                m.pop("json")
            samples.append((key, m))
        write_tar(root / "in" / f"{shard:05d}.tar", samples)
    return root / "in", annotate_by_captioners(root / "in", root / "ann", seed=3)


def _mixes(lacking, tmp_path, cfg):
    shards, ann = lacking
    full, ov = tmp_path / "full", tmp_path / "ov"
    api.mix(str(shards), str(ann), str(full), cfg, execution=QUIET)
    api.mix(str(shards), str(ann), str(ov), cfg, overlay=True, execution=QUIET)
    return shards, full, ov


def typed(samples) -> list[dict]:
    """Each sample's members with their types: equal values of another type do not pass."""
    return [{k: (type(v).__name__, v) for k, v in plain(s).items()} for s in samples]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_decoded_samples_get_the_types_decoding_the_mix_gives(lacking, tmp_path, strategy):
    cfg = MixConfig(**{**STRATEGIES[strategy].__dict__, "caption_keys": "best"})
    shards, full, ov = _mixes(lacking, tmp_path, cfg)
    for mode in ((), ("pil",)):
        want = typed(wds.WebDataset(urls(full), shardshuffle=False).decode(*mode))
        got = typed(wds.WebDataset(urls(shards), shardshuffle=False).decode(*mode).compose(overlay(str(ov))))
        assert got == want and len(want) >= 4, mode
        assert {t for s in got for t, _ in [s["txt"], s["json"]]} == {"str", "dict"}
        if strategy in ("synthetic", "threshold"):  # kept with no alt-text: input without txt, written with one
            assert any(int(s["__key__"][1][-4:]) % 4 in (1, 3) for s in got)
    # the stage holds back samples that cannot tell until one can: a stream starting with a sample
    # that lacks both txt and json, its image left as bytes by .decode(), reads as the mix decodes
    stream = list(wds.WebDataset(urls(shards), shardshuffle=False).decode())
    bare = next(i for i, x in enumerate(stream) if "txt" not in x and "json" not in x)
    stream.insert(0, stream.pop(bare))
    want = {x["__key__"][1]: x for x in typed(wds.WebDataset(urls(full), shardshuffle=False).decode())}
    got = typed(overlay(str(ov))(iter(stream)))
    assert [x["__key__"][1] for x in got] == [x["__key__"] for x in stream if x["__key__"] in want]
    assert all(x == want[x["__key__"][1]] for x in got)


def test_decoded_can_be_said(lacking, tmp_path):
    shards, full, ov = _mixes(lacking, tmp_path, STRATEGIES["synthetic"])
    bare = [s for s in wds.WebDataset(urls(shards), shardshuffle=False).decode() if "txt" not in s and "json" not in s]
    assert bare
    want = {s["__key__"]: plain(s) for s in wds.WebDataset(urls(full), shardshuffle=False).decode()}
    kept = [plain(s) for s in overlay(str(ov), decoded=True)(dict(s) for s in bare)]
    assert kept and all(isinstance(s["txt"], str) and s == want[s["__key__"]] for s in kept)
    raw = list(overlay(str(ov))(dict(s) for s in bare))  # nothing tells: read as bytes
    assert raw and all(isinstance(s["txt"], bytes) for s in raw)


@pytest.fixture(scope="module")
def keyed(lacking, tmp_path_factory):
    shards, ann = lacking
    ov = tmp_path_factory.mktemp("keyed") / "ov"
    api.mix(str(shards), str(ann), str(ov), MixConfig("both", fraction=0.7, caption_keys="all"), overlay=True,
            execution=QUIET)
    return shards, ov


CHOICE = {"recaption_raw": 1, "recaption_synthetic": 1, "recaption_candidate_1": 1}


def _read(shards, ov, **kw):
    return {s["__key__"]: s for s in wds.WebDataset(urls(shards), shardshuffle=False).compose(overlay(str(ov), **kw))}


def test_txt_is_chosen_among_the_keys_per_sample_and_epoch(keyed):
    shards, ov = keyed
    mixed = _read(shards, ov)
    import json

    epochs = [_read(shards, ov, captions=CHOICE, epoch=e) for e in range(4)]
    assert _read(shards, ov, captions=CHOICE, epoch=2) == epochs[2]  # fixed per sample and epoch
    chosen = Counter()
    for got in epochs:
        assert got.keys() == mixed.keys()
        for key, s in got.items():
            obj = json.loads(s["json"])
            options = {k: obj[k].encode() for k in CHOICE if k in obj and obj[k].strip()}
            which = [k for k, v in options.items() if v == s["txt"]]
            assert which, (key, s["txt"])  # one of the sample's keys...
            chosen[which[0]] += 1
            assert {k: v for k, v in s.items() if k != "txt"} == {k: v for k, v in mixed[key].items() if k != "txt"}
    assert set(chosen) == set(CHOICE)  # ...each of them, over the samples and epochs
    assert any(epochs[0][k]["txt"] != epochs[1][k]["txt"] for k in mixed)  # the epoch changes the draw
    # priority order, no weights: the first key the sample has
    prio = _read(shards, ov, captions="recaption_candidate_2;recaption_raw")
    for s in prio.values():
        obj = json.loads(s["json"])
        assert s["txt"] == obj.get("recaption_candidate_2", obj["recaption_raw"]).encode()


@pytest.mark.slow
def test_workers_and_ray_draw_the_same(keyed, ray_local):
    """A shared epoch set after the workers started reaches them; Ray draws as webdataset does."""
    import ray.data

    shards, ov = keyed
    epoch = multiprocessing.Value("i", 0)
    stage = overlay(str(ov), captions=CHOICE, seed=7, epoch=epoch)
    ds = wds.WebDataset(urls(shards), shardshuffle=False).compose(stage)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    for e in (0, 3):
        epoch.value = e
        got = {s["__key__"]: s["txt"] for s in loader}
        want = {k: s["txt"] for k, s in _read(shards, ov, captions=CHOICE, seed=7, epoch=e).items()}
        assert got == want, e
    rows = ray.data.read_webdataset(urls(shards), decoder=None).map_batches(
        ray_overlay(str(ov), captions=CHOICE, seed=7, epoch=3), batch_format="pandas").take_all()
    assert {r["__key__"]: r["txt"] for r in rows} == want


def test_a_choice_the_mix_did_not_write_is_refused(lacking, keyed, tmp_path):
    shards, full, ov = _mixes(lacking, tmp_path, MixConfig("both", fraction=0.7))
    with pytest.raises(RecaptionError, match="needs --caption-keys best"):
        list(wds.WebDataset(urls(shards), shardshuffle=False).compose(overlay(str(ov), captions="recaption_raw")))
    best = tmp_path / "best"
    api.mix(str(shards), str(lacking[1]), str(best), MixConfig("both", fraction=0.7, caption_keys="best"),
            overlay=True, execution=QUIET)
    with pytest.raises(RecaptionError, match="needs --caption-keys all"):
        stage = overlay(str(best), captions="recaption_candidate_0")
        list(wds.WebDataset(urls(shards), shardshuffle=False).compose(stage))
    with pytest.raises(RecaptionError, match="not a caption key"):
        overlay(str(keyed[1]), captions="caption")
