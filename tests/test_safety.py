"""Unsafe model files are never unpickled; unwritable or full disks give clear errors."""
import errno
import os
import pickle
import shutil

import pytest

from recaption.errors import RecaptionError
from recaption.io import atomic


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARKER']}",))


def test_pickled_weights_are_not_executed(tiny_models, tmp_path, monkeypatch):
    from recaption.captioners import build_captioner, load_preset

    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    d = tmp_path / "blip"
    shutil.copytree(tiny_models["blip"], d)
    (d / "model.safetensors").unlink()
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(Exception):  # noqa: B017  (any refusal to load will do: what matters is nothing ran)
        build_captioner(load_preset(str(d)))
    assert not marker.exists()


def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RecaptionError, match="cannot create output folder"):
        atomic.makedirs(str(blocker / "out"))


def test_disk_full_is_named_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "a.bin"

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    import fsspec.implementations.local as loc

    orig = loc.LocalFileSystem.open
    monkeypatch.setattr(loc.LocalFileSystem, "open", lambda self, p, mode="rb", **kw: Full(orig(self, p, mode, **kw)))
    with pytest.raises(RecaptionError, match="disk full"):
        atomic.write_bytes(str(target), b"data")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
