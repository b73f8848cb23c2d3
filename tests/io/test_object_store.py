"""Atomic writes on a real S3 server (moto, 127.0.0.1): the final name directly, never a temporary
object; an interrupted upload leaves nothing visible and nothing pending."""
import contextlib
import uuid

import pytest

from recaption.errors import RecaptionError
from recaption.io import atomic
from recaption.io import fs as rfs
from tests.servers import leftovers, s3_client_fs

pytestmark = pytest.mark.remote
MIB = 2**20


@pytest.fixture
def s3(s3_endpoint):
    """A fresh bucket, recaption pointed at the server through its storage options."""
    client = s3_client_fs(s3_endpoint)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    client.mkdir(bucket)
    before = rfs.get_options()
    rfs.set_options({"s3": {"endpoint_url": s3_endpoint, "default_block_size": 5 * MIB}})
    yield client, bucket
    rfs.set_options(before)


def test_write_goes_to_the_final_name_without_a_copy(s3, monkeypatch):
    client, b = s3
    import s3fs

    def no_copy(*a, **k):
        raise AssertionError("object stores must not copy a temporary object into place")

    monkeypatch.setattr(s3fs.S3FileSystem, "_cp_file", no_copy)  # the server-side copy a rename makes
    atomic.write_text(f"s3://{b}/out/_run.json", "{}")
    with atomic.atomic_open(f"s3://{b}/out/00000.tar") as f:
        f.write(b"a" * (6 * MIB))  # over one block: a multipart upload
    assert client.cat(f"{b}/out/_run.json") == b"{}"
    assert client.size(f"{b}/out/00000.tar") == 6 * MIB
    assert atomic.listdir(f"s3://{b}/out") == ["00000.tar", "_run.json"]
    assert leftovers(client, b) == {"temp_objects": [], "pending_uploads": []}


@pytest.mark.parametrize("size", [100, 6 * MIB], ids=["one-shot", "multipart"])
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_write_leaves_nothing(s3, size, exc):
    client, b = s3
    with pytest.raises(exc):
        with atomic.atomic_open(f"s3://{b}/out/00001.tar") as f:
            f.write(b"x" * size)
            f.flush()
            raise exc("killed mid-write")
    assert not atomic.exists(f"s3://{b}/out/00001.tar")
    assert client.find(b) == []
    assert leftovers(client, b) == {"temp_objects": [], "pending_uploads": []}


def test_stale_cleanup_aborts_a_killed_runs_uploads_and_removes_old_temps(s3):
    client, b = s3
    # A writer killed mid-upload: parts stored, never completed, never aborted.
    killed = client.open(f"{b}/out/00002.tar", "wb", block_size=5 * MIB)
    killed.write(b"y" * (6 * MIB))
    killed.flush()
    other = client.open(f"{b}/out/notes.csv", "wb", block_size=5 * MIB)  # not recaption's: left alone
    other.write(b"z" * (6 * MIB))
    other.flush()
    client.pipe(f"{b}/out/.00003.tar.recaption-4194305-1a2b3c4d.tmp", b"old temp")  # from a rename-style writer
    client.pipe(f"{b}/out/00000.tar", b"finished")
    assert sorted(leftovers(client, b)["pending_uploads"]) == ["out/00002.tar", "out/notes.csv"]
    assert atomic.remove_stale_temps(f"s3://{b}/out") == 2
    assert leftovers(client, b) == {"temp_objects": [], "pending_uploads": ["out/notes.csv"]}
    assert client.cat(f"{b}/out/00000.tar") == b"finished"
    for f in (killed, other):
        with contextlib.suppress(FileNotFoundError):  # the killed one's upload is gone already
            f.discard()
        f.closed = True


def test_files_written_by_another_process_are_seen_after_a_listing(s3):
    client, b = s3
    client.pipe(f"{b}/ann/00001.parquet", b"written earlier")
    assert atomic.listdir(f"s3://{b}/ann") == ["00001.parquet"]  # a listing a filesystem could cache
    client.pipe(f"{b}/ann/00000.parquet", b"written by a worker process")
    assert atomic.exists(f"s3://{b}/ann/00000.parquet")
    assert atomic.listdir(f"s3://{b}/ann") == ["00000.parquet", "00001.parquet"]


def test_output_folder_never_creates_a_bucket(s3):
    client, b = s3
    atomic.makedirs(f"s3://{b}-missing/out")
    assert not client.exists(f"{b}-missing")
    with pytest.raises(RecaptionError, match=f"cannot write s3://{b}-missing/out/x.json"):
        atomic.write_text(f"s3://{b}-missing/out/x.json", "{}")


def test_claiming_an_s3_folder_resumes_refuses_and_overwrites_like_a_local_one(s3):
    from recaption.io.folders import claim_output, record_written

    client, b = s3
    out = f"s3://{b}/mixed"
    rec = claim_output(out, "mix", {"a": 1}, overwrite=False)
    record_written(out, rec, ["00000.tar"])
    client.pipe(f"{b}/mixed/00000.tar", b"t")
    client.pipe(f"{b}/mixed/notes.txt", b"the user's")
    claim_output(out, "mix", {"a": 1}, overwrite=False)  # same settings: resume
    assert client.cat(f"{b}/mixed/00000.tar") == b"t"
    with pytest.raises(RecaptionError, match="another run's files"):
        claim_output(out, "mix", {"a": 2}, overwrite=False)
    claim_output(out, "mix", {"a": 2}, overwrite=True)  # removes what it recorded writing, nothing else
    assert atomic.listdir(out) == ["_recaption.json", "notes.txt"]
    client.pipe(f"{b}/foreign/00000.tar", b"someone else's")
    with pytest.raises(RecaptionError, match="did not write there"):
        claim_output(f"s3://{b}/foreign", "mix", {}, overwrite=False)
    client.pipe(f"{b}/afile", b"x")
    with pytest.raises(RecaptionError, match="not a folder"):
        claim_output(f"s3://{b}/afile", "mix", {}, overwrite=False)


def test_a_lock_object_refuses_a_second_run_and_is_checked_before_each_commit(s3):
    """Issue 31.5 on an object store: no exclusive create there, so the lock is an object read back
    after it is written, and checked again before every upload commits (best effort)."""
    import json

    from recaption.io import folders

    client, b = s3
    out = f"s3://{b}/out"
    client.pipe(f"{b}/out/{folders.LOCK}", json.dumps({"pid": 1, "host": "elsewhere.example",
                                                        "started": "2024-01-01T00:00:00", "token": "x"}).encode())
    with pytest.raises(RecaptionError, match="pid 1 on elsewhere.example"):
        with folders.locked(out):
            pass
    client.rm(f"{b}/out/{folders.LOCK}")
    with folders.locked(out):
        atomic.write_text(f"{out}/_summary.json", "{}")  # the lock is this run's: the commit goes through
        client.pipe(f"{b}/out/{folders.LOCK}", json.dumps({"pid": 2, "host": "elsewhere.example",
                                                            "started": "now", "token": "theirs"}).encode())
        with pytest.raises(RecaptionError, match="took this folder's lock"):
            atomic.write_text(f"{out}/00000.parquet", "partial")
    assert not client.exists(f"{b}/out/00000.parquet")  # refused before the upload became visible
    assert json.loads(client.cat(f"{b}/out/{folders.LOCK}"))["token"] == "theirs"  # the other run's lock stays
    assert leftovers(client, b)["pending_uploads"] == []
