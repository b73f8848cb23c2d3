"""Issue 33: every extension point is one `recaption.registry.Registry`, and nothing falls through:
an unknown name is one line naming the nearest known ones, a custom rule without its test is
refused where it is declared, a score column nobody read is an error, never another column."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recaption import annotators, api
from recaption.annotators.base import RuleKind
from recaption.errors import RecaptionError
from recaption.registry import Registry, load
from tests.annotators.brightness import Brightness


def registries() -> dict[str, Registry]:
    """Every extension point's registry, found as the package exposes them."""
    from recaption import mixing
    from recaption.captioners import base as captioners
    from recaption import engines
    from recaption.mixing import rules

    return {"annotator": annotators.REGISTRY, "strategy": mixing.STRATEGIES, "captioner backend": captioners.BACKENDS,
            "engine": engines.ENGINES, "filter rule": rules.RULE_KINDS}


def _typo(name: str) -> str:
    return name[:-1] + ("x" if name[-1] != "x" else "y")


@pytest.mark.parametrize("kind", list(registries()))
def test_every_registry_names_the_nearest_entries_of_an_unknown_name(kind):
    reg = registries()[kind]
    assert isinstance(reg, Registry) and reg.names()
    for name in reg.names():
        with pytest.raises(RecaptionError) as e:
            reg.get(_typo(name) + "-nothing")
        assert str(e.value).startswith(f"unknown {reg.kind} ")
        with pytest.raises(RecaptionError, match=f"did you mean .*{name}"):
            reg.get(_typo(name))


def test_the_users_doors_name_the_nearest_too():
    from recaption.engines import Execution
    from recaption.mixing.filters import normalize
    from recaption.mixing.strategies import MixConfig

    with pytest.raises(RecaptionError, match="unknown strategy 'thresold'; did you mean threshold"):
        MixConfig("thresold").validate()
    with pytest.raises(RecaptionError, match="unknown filter 'min-sid'; did you mean min-side"):
        normalize(["min-sid=200"])
    with pytest.raises(RecaptionError, match="unknown engine 'locl'; did you mean local"):
        Execution(engine="locl").validate()
    with pytest.raises(RecaptionError, match="unknown annotator 'clp'; did you mean clip"):
        api.annotator_configs({"clp": None})  # a typo is refused even when it switches nothing on


def test_a_custom_rule_without_its_test_is_refused_where_it_is_declared():
    with pytest.raises(RecaptionError, match="a custom rule names its test"):
        RuleKind("max-glare", ("brightness",), float, "no image", "no test given")
    with pytest.raises(RecaptionError, match="only a custom rule takes a test"):
        RuleKind("min-x", ("x",), float, "no x", "x", op="min", column="x", test=lambda t, v: None)


def test_a_custom_rule_runs_its_own_test_on_the_columns_it_declares():
    """Only `brightness` and the fixed columns: no `lang`, no `clip_raw` (the old fall-through read both)."""
    from recaption.mixing.filters import FilterSet

    annotators.register(Brightness)
    try:
        fs = FilterSet.of(["max-glare=50"])
        assert fs.columns == ["brightness"]
        t = pa.table({"brightness": pa.array([128.0, 10.0, None, 200.0], pa.float32())})
        assert fs.codes(t).tolist() == [-1, 0, 1, 0]
        assert fs.reasons(t, fs.codes(t)).to_pylist() == [None, "filter: max-glare 118 > 50",
                                                           "filter: max-glare: no image", "filter: max-glare 72 > 50"]
    finally:
        annotators.unregister("brightness")


def test_a_score_column_nobody_read_is_an_error_not_another_column():
    from recaption.mixing.columns import from_table
    from recaption.mixing.pool import Scores
    from recaption.mixing.strategies import PoolNumbers
    from recaption.scoring.blend import MinMax

    t = pa.table({"key": ["a"], "status": ["ok"], "raw_caption": ["x"], "clip_raw": pa.array([0.3], pa.float32()),
                  "sieve": pa.array([None], pa.float32())})
    c = from_table(t)
    n = PoolNumbers(MinMax(None, None), MinMax(None, None), None)
    assert Scores("clip_raw", n).of(c).tolist() == pytest.approx([0.3])
    with pytest.raises(RecaptionError, match="score column 'brightness' was not read"):
        Scores("brightness", n).of(c)
    c = from_table(t, scores=["brightness"])  # read for a strategy, but absent from this file: missing
    assert np.isnan(c.score("brightness")).all()


def test_one_loader_for_every_target():
    assert load("recaption.registry:Registry") is Registry
    assert load("recaption.registry:Registry.get") is Registry.get
    import recaption.engines.local as local

    assert load("recaption.engines.local") is local
    with pytest.raises(RecaptionError, match="cannot load engine 'x' recaption.nothing"):
        load("recaption.nothing:X", "engine 'x'")


def test_a_registry_refuses_a_taken_name_and_keeps_its_built_ins():
    reg = Registry("toy")
    reg.register("a", "recaption.registry:Registry", builtin=True)
    reg.register("a", "recaption.registry:Registry")  # the same target again: no-op
    with pytest.raises(RecaptionError, match="registered already"):
        reg.register("a", "recaption.registry:load")
    with pytest.raises(RecaptionError, match="built in"):
        reg.unregister("a")
    reg.register("b", load)
    assert reg.names() == ["a", "b"] and reg.get("b") is load and reg.target("b") == "recaption.registry:load"
    reg.unregister("b")
    with pytest.raises(RecaptionError, match="unknown toy 'b'"):
        reg.get("b")


@pytest.mark.parametrize("name", __import__("recaption.captioners.base", fromlist=["BACKENDS"]).BACKENDS.names())
def test_every_backend_prepares_as_the_input_thread_calls_it(name):
    """The input thread calls `prepare(images)`; a backend wanting more lost its prepare-ahead."""
    import inspect

    from recaption.captioners.base import BACKENDS, Captioner

    cls = load(BACKENDS.get(name).target)
    assert issubclass(cls, Captioner)
    params = list(inspect.signature(cls.prepare).parameters)
    assert params == ["self", "images"], (name, params)
    if hasattr(cls, "prepare_pixels"):
        assert list(inspect.signature(cls.prepare_pixels).parameters) == ["self", "pixels"], name


def test_a_backend_on_a_shared_class_is_not_guessed_into_another_model():
    """HFCaptioner once loaded BLIP-2 for any backend name but `blip`."""
    from recaption.captioners.base import BACKENDS, Backend, CaptionerConfig, build_captioner

    with BACKENDS.saved():
        BACKENDS.register("blip3", Backend("recaption.captioners.hf:HFCaptioner"))
        with pytest.raises(RecaptionError, match="serves the blip and blip2 backends, not 'blip3'"):
            build_captioner(CaptionerConfig(backend="blip3", model="nowhere/blip3", device="cpu"))
    assert "blip3" not in BACKENDS


def test_an_unknown_name_among_hundreds_lists_the_first_ones_and_a_count():
    """open_clip knows hundreds of models: the error stays one readable line, nearest names first."""
    from recaption.errors import LISTED, unknown

    known = [f"ViT-{i}" for i in range(LISTED * 10)]
    msg = str(unknown("CLIP model", "ViT-7x", known))
    assert "did you mean ViT-7" in msg
    assert f"... {len(known) - LISTED} more)" in msg and f"ViT-{LISTED}," not in msg
    assert str(unknown("rule", "x", known[:LISTED])).endswith(f"ViT-{LISTED - 1})")
