"""Issue 14.4: progress counts samples as workers process them, and without a terminal it is a
log line every few seconds with done/total, rate and ETA."""
import logging

import pytest

from recaption.engines import Execution
from recaption.progress import Progress


class TwoSteps:
    """A stage that reports its two samples one at a time, as annotate reports its batches."""

    def __call__(self, item, progress=None):
        for _ in range(2):
            progress(1)
        return {"shard": str(item), "status": "done", "samples": 2}


def test_log_lines_without_a_terminal(caplog):
    with caplog.at_level(logging.INFO, logger="recaption"):
        with Progress("annotate", total=4, quiet=False, log_every=0, tty=False) as p:
            p.advance(1)
            p.advance(3)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("annotate: 1/4 samples (25%)") and "samples/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("annotate: 4/4 samples (100%)")


def test_quiet_says_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="recaption"):
        with Progress("x", total=2, quiet=True, log_every=0, tty=False) as p:
            p.advance(2)
    assert not caplog.records


@pytest.mark.parametrize("engine", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_workers_report_samples_as_they_go(engine, request, caplog):
    if engine == "ray":
        request.getfixturevalue("ray_local")
    from recaption.engines import run_stage

    with caplog.at_level(logging.INFO, logger="recaption"):
        reports = run_stage(TwoSteps(), [1, 2, 3], Execution(engine=engine, workers=2, log_every=0),
                             desc="t", count_of=lambda i: 2)
    assert len(reports) == 3
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("t: ")]
    assert lines[-1].startswith("t: 6/6 samples (100%)")
    if engine == "local":  # each sample arrives as its own step, not a shard's worth at once
        assert any(ln.startswith("t: 1/6") or ln.startswith("t: 3/6") or ln.startswith("t: 5/6") for ln in lines)
