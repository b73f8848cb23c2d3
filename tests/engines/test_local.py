"""The local engine's worker processes (one per GPU; here two CPU workers) give the same files as
in-process work: exactly for keys, captions and statuses; floats within rounding, since two
workers on two cores run torch with one thread each and in-process work with two."""
import pytest

from recaption.io import annotations as ann
from tests.test_end_to_end import cli

FLOATS = ("clip_raw", "sieve", "sieve_mean")


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
                assert (x[col] is None) == (y[col] is None) and (x[col] is None or x[col] == pytest.approx(y[col], abs=1e-5))
            assert x["clip_captions"] == pytest.approx(y["clip_captions"], abs=1e-5)
            same = {k: v for k, v in x.items() if k not in FLOATS + ("clip_captions",)}
            assert same == {k: v for k, v in y.items() if k not in FLOATS + ("clip_captions",)}
