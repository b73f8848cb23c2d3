"""Every strategy, sample by sample: caption written, its source, and drops (SPEC 4)."""
import pytest

from recaption.errors import RecaptionError
from recaption.mixing.strategies import MixConfig, PoolNumbers, decide, synthetic_of
from recaption.scoring.blend import MinMax


def row(key, raw="alt", clip_raw=0.3, caps=("s1", "s2"), clips=(0.1, 0.4), sieve=0.5, status="ok", error=None):
    return {"key": key, "raw_caption": raw, "clip_raw": clip_raw, "captions": list(caps),
            "clip_captions": list(clips) if clips is not None else [], "sieve": sieve, "status": status,
            "error": error, "captioner": "m"}


POOL = PoolNumbers(MinMax(0.0, 1.0), MinMax(0.0, 0.5), None)


def pool(t):
    return PoolNumbers(POOL.sieve, POOL.clip_raw, t)


def test_synthetic_is_best_clip_candidate_first_on_ties_or_first_without_scores():
    assert synthetic_of(row("a")) == ("s2", 0.4)
    assert synthetic_of(row("a", clips=(0.4, 0.4))) == ("s1", 0.4)
    assert synthetic_of(row("a", clips=None)) == ("s1", None)
    assert synthetic_of(row("a", caps=(), clips=())) == (None, None)


def test_raw():
    cfg = MixConfig("raw")
    assert decide(row("a"), cfg, pool(None)).caption == "alt"
    assert decide(row("a", clip_raw=0.28), cfg, pool(0.28)).keep  # tie at threshold is kept
    d = decide(row("a", clip_raw=0.27), cfg, pool(0.28))
    assert not d.keep and "below threshold" in d.reason
    assert "no raw caption" in decide(row("a", raw=None, clip_raw=None), cfg, pool(None)).reason
    assert "no clip_raw" in decide(row("a", clip_raw=None), cfg, pool(0.2)).reason


def test_synthetic():
    cfg = MixConfig("synthetic")
    d = decide(row("a"), cfg, pool(0.4))
    assert (d.keep, d.caption, d.source, d.clip_synthetic) == (True, "s2", "synthetic", 0.4)
    assert not decide(row("a"), cfg, pool(0.41)).keep
    assert "no synthetic" in decide(row("a", caps=(), clips=()), cfg, pool(None)).reason
    assert decide(row("a", clips=None), cfg, pool(None)).caption == "s1"


def test_threshold_with_and_without_filter():
    cfg = MixConfig("threshold", threshold=0.3)
    d = decide(row("a", clip_raw=0.3), cfg, pool(0.3))
    assert (d.caption, d.source) == ("alt", "raw")
    d = decide(row("a", clip_raw=0.2), cfg, pool(0.3))
    assert (d.caption, d.source) == ("s2", "synthetic")
    assert decide(row("a", clip_raw=0.2, clips=(0.1, 0.2)), cfg, pool(0.3)).keep  # no filter
    f = MixConfig("threshold", threshold=0.3, filter_synthetic=True)
    d = decide(row("a", clip_raw=0.2, clips=(0.1, 0.2)), f, pool(0.3))
    assert not d.keep and "both below" in d.reason
    assert decide(row("a", clip_raw=0.2, clips=(0.1, 0.3)), f, pool(0.3)).keep  # tie kept
    d = decide(row("a", raw=None, clip_raw=None), cfg, pool(0.3))
    assert d.source == "synthetic"  # no alt-text: the synthetic caption stands in


def test_both_writes_raw_and_carries_synthetic():
    d = decide(row("a"), MixConfig("both"), pool(None))
    assert (d.caption, d.synthetic, d.source) == ("alt", "s2", "raw")


def test_sieve_uses_the_blend():
    cfg = MixConfig("sieve", fraction=0.5, alpha=0.5)
    # norm(sieve)=0.5, norm(clip_raw)=0.6 -> 0.55
    d = decide(row("a", sieve=0.5, clip_raw=0.3), cfg, pool(0.55))
    assert d.keep and d.blend == pytest.approx(0.55) and d.caption == "alt"
    assert not decide(row("a", sieve=0.5, clip_raw=0.29), cfg, pool(0.55)).keep
    assert "no blend" in decide(row("a", sieve=None), cfg, pool(0.55)).reason


def test_error_rows_are_dropped_with_their_reason():
    d = decide(row("a", status="error", error="decode: image is empty"), MixConfig("raw"), pool(None))
    assert not d.keep and d.reason == "decode: image is empty"


@pytest.mark.parametrize("kw,msg", [
    ({"strategy": "nope"}, "unknown strategy"),
    ({"strategy": "threshold"}, "needs --threshold or --fraction"),
    ({"strategy": "raw", "threshold": 0.1, "fraction": 0.2}, "not both"),
    ({"strategy": "raw", "fraction": 2.0}, "within"),
    ({"strategy": "raw", "filter_synthetic": True}, "only applies"),
])
def test_bad_configs(kw, msg):
    with pytest.raises(RecaptionError, match=msg):
        MixConfig(**kw).validate()
