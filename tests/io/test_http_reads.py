"""Issue 32: HTTP reads as users expect them, against real failing servers on 127.0.0.1: retries on
5xx, a read timeout, errors that name the status, and a cut-off transfer named as one."""
import tarfile
import time
from pathlib import Path

import pytest

import recaption
from recaption.io import fs as rfs
from recaption.io.shards import Sample, iter_shard, split_member
from recaption.io.sources import list_shards
from tests.servers import hostile_http_server, need_http_client

FAST = {"http": {"tries": 3, "backoff": 0.01, "read_timeout": 0.5}}
SHARD = Path(recaption.__file__).parent / "data" / "sample-shards" / "00000.tar"  # 16 samples


@pytest.fixture
def served(tmp_path):
    need_http_client()
    src = SHARD
    (tmp_path / "whole.tar").write_bytes(src.read_bytes())
    with tarfile.open(src) as t:
        keys, cut = [], None
        for m in t.getmembers():
            k = split_member(m.name)[0]
            if k not in keys:
                keys.append(k)
            if len(keys) == 9 and cut is None:
                cut = m.offset  # the header of the ninth sample's first member
    assert len(keys) == 16 and cut
    (tmp_path / "cut.tar").write_bytes(src.read_bytes()[:cut])
    with rfs.using(FAST), hostile_http_server(tmp_path) as (base, hits):
        yield base, hits, keys


def test_a_5xx_is_retried_then_named_with_its_status_not_as_missing(served):
    base, hits, _ = served
    url = f"{base}/500/whole.tar"
    assert list_shards(url) == [url]  # not "input not found": the read says what happened
    assert list_shards(f"{base}/500/{{whole,cut}}.tar") == [f"{base}/500/whole.tar", f"{base}/500/cut.tar"]
    hits.clear()
    (fail,) = iter_shard(url)
    assert fail.key is None and fail.reason == f"read: cannot open shard (HTTP 500 from {url} after 3 tries)"
    assert hits[("500", "whole.tar")] >= 3  # tried again, each time answered 500
    with pytest.raises(Exception, match="input not found"):
        list_shards(f"{base}/500/missing.tar")  # a 404 is missing


def test_a_flaky_server_gets_its_retries_and_every_sample_is_read(served):
    base, hits, keys = served
    recs = list(iter_shard(f"{base}/flaky/whole.tar"))
    assert all(isinstance(r, Sample) for r in recs) and [r.key for r in recs] == keys
    assert hits[("flaky", "whole.tar")] > 2  # two 500s, then the answers


def test_a_transfer_cut_between_members_without_content_length_is_a_truncated_shard(served):
    base, _, keys = served
    recs = list(iter_shard(f"{base}/noclen/whole.tar"))  # the whole file, no Content-Length: no false alarm
    assert [r.key for r in recs] == keys and all(isinstance(r, Sample) for r in recs)
    recs = list(iter_shard(f"{base}/noclen/cut.tar"))
    assert [r.key for r in recs if isinstance(r, Sample)] == keys[:7]
    assert recs[7].key == keys[7] and "may be cut off" in recs[7].reason
    assert recs[-1].key is None and "truncated tar" in recs[-1].reason and len(recs) == 9


def test_a_server_that_stalls_after_its_headers_costs_the_read_timeout(served):
    base, _, keys = served
    t0 = time.monotonic()
    recs = list(iter_shard(f"{base}/stall/whole.tar"))
    assert time.monotonic() - t0 < 10  # 0.5 s of silence, not as long as the server holds on
    assert recs[-1].key is None and "transfer failed (no data from" in recs[-1].reason
    assert "for 0.5 s" in recs[-1].reason
    good = [r.key for r in recs if isinstance(r, Sample)]
    assert good and good == keys[: len(good)]


def test_http_settings_are_checked():
    with pytest.raises(Exception, match="tries"):
        rfs.http_settings({"tries": 0})
    assert rfs.http_settings({"read_timeout": 5})["read_timeout"] == 5.0
