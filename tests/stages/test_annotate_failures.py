"""A shard that fails is reported to the user once, in one line; the traceback only with --debug."""
import logging

from tests.helpers import cli


def _disk_full(*a, **k):
    raise OSError("disk full")


def _said(caplog, level):
    return [r for r in caplog.records if r.levelno >= level and "00000" in r.getMessage()]


def test_a_failed_shard_is_reported_once(shard_dir, tiny_models, tmp_path, monkeypatch, caplog):
    from recaption.io import annotations

    monkeypatch.setattr(annotations, "write", _disk_full)
    with caplog.at_level(logging.INFO):
        cli("caption", shard_dir / "00000.tar", "-o", tmp_path / "ann", "-c", tiny_models["blip"], "-q")
    lines = _said(caplog, logging.WARNING)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "disk full" in lines[0].getMessage() and lines[0].exc_info is None


def test_debug_shows_the_traceback(shard_dir, tiny_models, tmp_path, monkeypatch, caplog):
    from recaption.io import annotations

    monkeypatch.setattr(annotations, "write", _disk_full)
    with caplog.at_level(logging.DEBUG):
        cli("--debug", "caption", shard_dir / "00000.tar", "-o", tmp_path / "ann", "-c", tiny_models["blip"], "-q")
    assert any(r.exc_info for r in _said(caplog, logging.DEBUG))

