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


class Sized:
    """A stage whose items hold as many samples as they say, and that loads its models first."""

    def __call__(self, item, progress=None):
        progress("loading models")
        for _ in range(item):
            progress(1)
        return {"shard": f"s{item}", "status": "done", "samples": item}


def _lines(caplog, prefix):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


def test_final_line_is_logged_once(caplog):
    with caplog.at_level(logging.INFO, logger="recaption"):
        with Progress("annotate", total=4, quiet=False, log_every=0, tty=False) as p:
            p.advance(1)
            p.advance(3)
    assert sum(ln.startswith("annotate: 4/4") for ln in _lines(caplog, "annotate")) == 1


def test_unknown_totals_are_estimated_and_a_finished_run_ends_at_its_count(caplog):
    from recaption.engines import run_stage

    with caplog.at_level(logging.INFO, logger="recaption"):
        run_stage(Sized(), [2, 5, 3], Execution(log_every=0), desc="t")  # no count_of: nothing known up front
    lines = _lines(caplog, "t: ")
    assert "t: loading models..." in lines  # said before the first samples, once
    counts = [ln for ln in lines if "samples/s" in ln]
    assert any("/~6 samples" in ln for ln in counts)  # after the first item: 2 a shard, 3 shards, an estimate
    assert counts[-1].startswith("t: 10/10 samples (100%)")  # not 10/6 (167%)
    assert all("/~" not in ln for ln in counts[-1:])


def test_known_counts_give_the_total_before_any_sample(caplog):
    from recaption.engines import run_stage

    with caplog.at_level(logging.INFO, logger="recaption"):
        run_stage(Sized(), [2, 5, 3], Execution(log_every=0), desc="t", count_of=lambda i: i)
    counts = [ln for ln in _lines(caplog, "t: ") if "samples/s" in ln]
    assert counts[0].startswith("t: 1/10 samples")


def test_annotation_row_counts_give_the_total(shard_dir, tmp_path, tiny_models, caplog):
    """Shards without img2dataset stats files: a score pass over annotation files knows its total from
    their row counts, and its timings count the models' loading."""
    import shutil

    from recaption import api
    from recaption.scoring.clip import ClipConfig

    shards = tmp_path / "s"
    shards.mkdir()
    for t in sorted(shard_dir.glob("*.tar")):
        shutil.copy(t, shards / t.name)  # the tars alone
    ann = tmp_path / "a"
    api.annotate(str(shards), str(ann), {}, execution=Execution(quiet=True))  # metrics only: a row a sample
    assert api.sample_counts(str(ann))(str(shards / "00000.tar")) == 6
    with caplog.at_level(logging.INFO, logger="recaption"):
        s = api.annotate(str(shards), str(ann), clip=ClipConfig(tiny_models["clip"], None, dtype="float32"),
                         execution=Execution(log_every=0))
    counts = [ln for ln in _lines(caplog, "annotate: ") if "samples/s" in ln]
    assert counts[0].startswith("annotate: 6/18 samples"), counts
    assert s["stage_seconds"]["load_models"] > 0
