"""The local engine's worker processes (one per GPU; here two CPU workers) give the same files."""
from recaption.io import annotations as ann
from tests.test_end_to_end import cli


def test_two_worker_processes_match_in_process(shard_dir, tiny_models, minilm, tmp_path):
    common = ["-c", "sieve", "--model", tiny_models["blip"], "--num-captions", 2, "--clip-model",
              tiny_models["clip"], "--sieve-model", minilm, "--batch-size", 4, "-q"]
    assert cli("annotate", shard_dir, "-o", tmp_path / "one", "--workers", 1, *common) == 0
    assert cli("annotate", shard_dir, "-o", tmp_path / "two", "--workers", 2, *common) == 0
    for f in sorted((tmp_path / "one").glob("*.parquet")):
        assert ann.read_rows(str(f)) == ann.read_rows(str(tmp_path / "two" / f.name))
