"""Issue 12.2/12.8: every worker runs torch with the same thread count for a given command on
either engine (cores shared by the workers), so results do not depend on the engine."""
import pytest

from recaption.engines import Execution, cpu_cores, run_stage


pytestmark = pytest.mark.slow  # worker processes and Ray actors


class ThreadProbe:
    uses_torch = True

    def __call__(self, item, progress=None):
        import torch

        if progress:
            progress(1)
        return {"shard": str(item), "status": "done", "samples": 1, "threads": torch.get_num_threads()}


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_workers_share_the_cores(engine, request):
    if engine == "ray":
        request.getfixturevalue("ray_local")
    reports = run_stage(ThreadProbe(), [1, 2, 3], Execution(engine=engine, workers=2, quiet=True))
    assert sorted(r["shard"] for r in reports) == ["1", "2", "3"]
    assert {r["threads"] for r in reports} == {max(1, cpu_cores() // 2)}


def test_threads_option_wins(ray_local):
    for engine in ("local", "ray"):
        reports = run_stage(ThreadProbe(), [1, 2], Execution(engine=engine, workers=2, threads=3, quiet=True))
        assert {r["threads"] for r in reports} == {3}
