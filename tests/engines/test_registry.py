"""Issue 24.3: engines are a registry of modules with a written contract (recaption/engines/__init__.py);
each owns its options, and a new engine is one module plus its registration."""
import importlib

import pytest

from recaption import api, engines
from recaption.engines import Execution, run_stage
from recaption.errors import RecaptionError
from recaption.mixing.strategies import MixConfig
from tests.helpers import annotate_randomly, cli, tree_bytes


class Echo:
    def __call__(self, item, progress=None):
        return {"shard": str(item), "status": "done", "samples": 1}


@pytest.mark.parametrize("name", engines.ENGINES.names())
def test_every_engine_module_keeps_the_contract(name):
    mod = importlib.import_module(engines.ENGINES.target(name))
    assert engines.engine(name) is mod
    for fn in ("validate", "preflight", "run", "mapper"):
        assert callable(getattr(mod, fn)), (name, fn)
    assert all(o.name for o in mod.OPTIONS)


def test_an_engine_option_belongs_to_its_engine(shard_dir, capsys):
    with pytest.raises(RecaptionError, match="option of the ray engine"):
        Execution(engine="local", options={"ray_address": "auto"}).validate()
    with pytest.raises(RecaptionError, match="unknown engine option"):
        Execution(options={"warp": 9}).validate()
    Execution(options={"ray_address": None}).validate()  # not given: fine
    assert cli("mix", shard_dir, "-a", "/nowhere", "--strategy", "raw", "--dry-run", "--ray-address", "auto") == 2
    assert "--ray-address is an option of the ray engine" in capsys.readouterr().err


def test_items_must_be_json(tmp_path):
    with pytest.raises(RecaptionError, match="JSON-able"):
        run_stage(Echo(), [object()], Execution(quiet=True))


@pytest.fixture
def serial():
    engines.ENGINES.register("serial", "tests.engines.serial")  # the one registration line
    yield
    engines.ENGINES.unregister("serial")


def test_an_engine_option_left_at_its_default_is_not_given(serial, shard_dir, tmp_path, capsys):
    """The serial engine's bool option defaults to False, as `declare.Option` documents a bool: the
    other engines' verbs must not take that default for a given option (they once all failed)."""
    Execution(engine="local", options={"serial_reverse": False}).validate()
    with pytest.raises(RecaptionError, match="option of the serial engine"):
        Execution(engine="local", options={"serial_reverse": True}).validate()
    ann = annotate_randomly(shard_dir, tmp_path / "ann")
    assert cli("mix", shard_dir, "-a", ann, "--strategy", "raw", "--dry-run", "--json") == 0
    assert cli("mix", shard_dir, "-a", ann, "--strategy", "raw", "--dry-run", "--serial-reverse") == 2
    assert "--serial-reverse is an option of the serial engine" in capsys.readouterr().err
    # the engine registered at run time is a choice of --engine like a built-in one
    assert cli("mix", shard_dir, "-a", ann, "--strategy", "raw", "--dry-run", "--engine", "serial",
               "--serial-reverse", "--json") == 0


def test_a_new_engine_is_one_module_and_its_registration(serial, shard_dir, tmp_path):
    reports = run_stage(Echo(), [1, 2, 3], Execution(engine="serial", options={"serial_reverse": True}))
    assert [r["shard"] for r in reports] == ["3", "2", "1"]
    with pytest.raises(RecaptionError, match="one worker"):
        Execution(engine="serial", workers=2).validate()
    # the mix runs its pool pass, plan and writes through it, and writes what the local engine writes
    ann = annotate_randomly(shard_dir, tmp_path / "ann")
    cfg = MixConfig("threshold", fraction=0.5, samples_per_shard=4)
    api.mix(str(shard_dir), str(ann), str(tmp_path / "local"), cfg, execution=Execution(quiet=True))
    api.mix(str(shard_dir), str(ann), str(tmp_path / "serial"), cfg, execution=Execution(engine="serial"))
    assert tree_bytes(tmp_path / "local") == tree_bytes(tmp_path / "serial")


def test_overlay_and_dry_run_are_refused_together_by_the_api(shard_dir, tmp_path):
    with pytest.raises(RecaptionError, match="choose one"):
        api.mix(str(shard_dir), str(tmp_path), str(tmp_path / "o"), MixConfig("raw"), overlay=True, dry_run=True)
    with pytest.raises(RecaptionError, match="give --out"):
        api.mix(str(shard_dir), str(tmp_path), None, MixConfig("raw"))
    assert not (tmp_path / "o").exists()


def test_an_unreachable_ray_address_is_one_line_not_a_hang(shard_dir, tmp_path, capsys):
    """Ray retries an unreachable cluster for ever; recaption tries the port once and says so."""
    import socket

    ann = annotate_randomly(shard_dir, tmp_path / "ann")

    with socket.socket() as s:  # a port nobody listens on: bound, never accepted
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli("mix", shard_dir, "-a", ann, "--strategy", "raw", "--dry-run", "--engine", "ray",
               "--ray-address", f"127.0.0.1:{port}") == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "error" in ln]
    assert len(err) == 1 and f"cannot reach a Ray cluster at 127.0.0.1:{port}" in err[0]
