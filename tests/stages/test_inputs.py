"""The annotate pass reads images through the fast input path by default; the exact path agrees."""
import pytest

from tests.helpers import cli


@pytest.mark.slow
def test_fast_and_exact_input_paths_agree(shard_dir, tiny_models, tmp_path):
    """The annotate pass on the fast input path (default) against each model's own processor."""
    from recaption.io import annotations as ann

    rows = {}
    for path in ("fast", "exact"):
        a = tmp_path / path
        assert cli("annotate", shard_dir / "00000.tar", "-o", a, "-c", tiny_models["blip"], "--clip-model",
                   tiny_models["clip"], "--no-sieve", "--preprocess", path, "--dtype", "float32", "-q") == 0
        rows[path] = ann.read_rows(str(a / "00000.parquet"))
        groups = ann.read_metadata(str(a / "00000.parquet"))["groups"]
        assert ("preprocess" in groups["clip"]) == (path == "exact")  # recorded: resuming across paths is refused
    for f, e in zip(rows["fast"], rows["exact"]):
        assert f["captions"] == e["captions"]  # BLIP's pixels are equal on both paths
        if e["clip_raw"] is not None:
            assert f["clip_raw"] == pytest.approx(e["clip_raw"], abs=1e-2)
