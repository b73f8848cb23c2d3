"""The local engine's worker processes (one per GPU; here two CPU workers) give the same files as
in-process work: exactly for keys, captions and statuses; floats within rounding, since two
workers on two cores run torch with one thread each and in-process work with two."""
import pytest

from recaption.io import annotations as ann
from tests.helpers import cli

FLOATS = ("clip_raw", "sieve", "sieve_mean")


@pytest.mark.slow
def test_two_worker_processes_match_in_process(shard_dir, tiny_models, minilm, tmp_path):
    common = ["-c", "sieve", "--model", tiny_models["blip"], "--num-captions", 2, "--clip-model",
              tiny_models["clip"], "--sieve-model", minilm, "--batch-size", 4, "-q"]
    assert cli("annotate", shard_dir, "-o", tmp_path / "one", "--workers", 1, *common) == 0
    assert cli("annotate", shard_dir, "-o", tmp_path / "two", "--workers", 2, *common) == 0
    for f in sorted((tmp_path / "one").glob("*.parquet")):
        a, b = ann.read_rows(str(f)), ann.read_rows(str(tmp_path / "two" / f.name))
        assert len(a) == len(b)
        for x, y in zip(a, b):
            for col in FLOATS:
                assert (x[col] is None) == (y[col] is None)
                assert x[col] is None or x[col] == pytest.approx(y[col], abs=1e-5)
            assert x["clip_captions"] == pytest.approx(y["clip_captions"], abs=1e-5)
            same = {k: v for k, v in x.items() if k not in FLOATS + ("clip_captions",)}
            assert same == {k: v for k, v in y.items() if k not in FLOATS + ("clip_captions",)}


def test_cpu_only_stages_take_a_process_per_two_cores_where_the_work_pays():
    from recaption.engines.local import SAMPLES_PER_PROCESS, cpu_workers

    assert cpu_workers(None, 16) == 8 and cpu_workers(None, 1) == 1  # count unknown: the cores decide
    assert cpu_workers(100 * SAMPLES_PER_PROCESS, 16) == 8
    assert cpu_workers(3 * SAMPLES_PER_PROCESS, 16) == 3  # no process without its share of samples
    assert cpu_workers(SAMPLES_PER_PROCESS - 1, 16) == 1 and cpu_workers(0, 2) == 1
    assert cpu_workers(100 * SAMPLES_PER_PROCESS, 2) == 1  # two cores: one process and its writer thread
