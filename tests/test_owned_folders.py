"""Issue 31.5 and 31.6: one run per folder (a lock naming its holder; a dead holder's taken over),
only recaption's temporaries of dead processes removed, and an output that is the input through
a bind mount refused (device and inode, not only paths)."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from recaption.io import atomic, folders
from tests.helpers import cli, dead_pid


@pytest.fixture(scope="module")
def ann(tmp_path_factory, shard_dir, tiny_models):
    a = tmp_path_factory.mktemp("owned") / "ann"
    assert cli("score", shard_dir, "-a", a, "--clip-model", tiny_models["clip"], "--no-sieve", "-q") == 0
    return a


def _tree(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _lock(out, pid, host=None):
    out.mkdir(parents=True, exist_ok=True)
    lock = {"pid": pid, "host": host or socket.gethostname(), "started": "2024-01-01T00:00:00+0000",
            "token": "theirs"}
    (out / folders.LOCK).write_text(json.dumps(lock))
    return lock


def test_a_live_lock_is_refused_naming_its_holder_and_nothing_changes(shard_dir, ann, tmp_path, capsys):
    out = tmp_path / "out"
    _lock(out, os.getppid())  # the process that started this one: alive, and not us
    before = _tree(out)
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "--overwrite", "-q") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pid {os.getppid()} on {socket.gethostname()}" in err[0], err
    assert "2024-01-01T00:00:00" in err[0] and "being written by another recaption run" in err[0]
    assert _tree(out) == before


def test_a_lock_on_another_host_is_refused(shard_dir, ann, tmp_path, capsys):
    out = tmp_path / "out"
    _lock(out, dead_pid(), host="elsewhere.example")  # its liveness cannot be known from here
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "-q") == 2
    assert "on elsewhere.example" in capsys.readouterr().err


def test_a_dead_runs_lock_is_named_and_taken_over(shard_dir, ann, tmp_path, caplog):
    out = tmp_path / "out"
    pid = dead_pid()
    _lock(out, pid)
    with caplog.at_level("WARNING", logger="recaption"):
        assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "-q") == 0
    assert any(f"pid {pid}" in r.getMessage() and "no longer running" in r.getMessage() for r in caplog.records)
    assert list(out.glob("*.tar")) and not (out / folders.LOCK).exists()  # released when the run ends


def test_a_finished_run_leaves_no_lock_and_a_refused_one_no_folder(shard_dir, ann, tmp_path):
    out = tmp_path / "out"
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "-q") == 0
    assert not (out / folders.LOCK).exists()
    empty = tmp_path / "new"
    with pytest.raises(RuntimeError), folders.locked(str(empty)):
        assert (empty / folders.LOCK).exists()
        raise RuntimeError("the run failed before writing")
    assert not empty.exists()  # the lock made the folder; nothing else was written, so it goes


HOLD = textwrap.dedent("""
    import sys, time
    from recaption.io import folders
    with folders.locked(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
""")


@pytest.mark.slow
def test_a_second_run_is_refused_while_another_process_writes(shard_dir, ann, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "-q") == 0
    before = _tree(out)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (["--strategy", "raw"], ["--strategy", "raw", "--samples-per-shard", 2, "--overwrite"]):
            assert cli("mix", shard_dir, "-a", ann, "-o", out, *args, "-q") == 2
            assert f"pid {holder.pid}" in capsys.readouterr().err
        assert {k: v for k, v in _tree(out).items() if k != folders.LOCK} == before
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is stale now, and the next run takes it over
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "-q") == 0


def test_only_recaptions_temporaries_of_dead_processes_are_removed(shard_dir, ann, tmp_path):
    out = tmp_path / "out"
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "-q") == 0
    theirs = [".notes.tmp", ".00000.tar.1a2b3c4d.tmp", ".cache.swp.tmp"]  # hidden *.tmp, not recaption's
    live = f".00001.tar.recaption-{os.getppid()}-0badf00d.tmp"  # a process still writing it
    dead = f".00000.tar.recaption-{dead_pid()}-deadbeef.tmp"
    for name in (*theirs, live, dead):
        (out / name).write_bytes(b"partial")
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "-q") == 0  # claims it again
    assert all((out / n).read_bytes() == b"partial" for n in (*theirs, live))
    assert not (out / dead).exists()


def test_temporary_names_say_whose_they_are():
    name = atomic.temp_name("00000.tar")
    assert atomic.TEMP.match(name) and f".recaption-{os.getpid()}-" in name and name.startswith(".00000.tar.")


@pytest.fixture()
def bound(tmp_path, shard_dir, ann, tiny_models):
    """Input shards an earlier recaption mix wrote (its record lists them, so --overwrite of that
    folder would remove them), their annotations, and the folder bind-mounted at another path."""
    src, alias, src_ann = tmp_path / "shards", tmp_path / "alias", tmp_path / "ann2"
    assert cli("mix", shard_dir, "-a", ann, "-o", src, "--strategy", "raw", "-q") == 0
    assert cli("score", src, "-a", src_ann, "--clip-model", tiny_models["clip"], "--no-sieve", "-q") == 0
    alias.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(alias)], capture_output=True).returncode != 0:
        pytest.skip("no bind mounts here (needs root and CAP_SYS_ADMIN)")
    try:
        yield src, alias, src_ann
    finally:
        subprocess.run(["umount", str(alias)], check=False)


@pytest.mark.parametrize("where", ["{alias}", "{alias}/mixed"])
def test_an_output_that_is_the_input_through_a_bind_mount_is_refused(bound, where, capsys):
    src, alias, src_ann = bound
    before = _tree(src)
    out = where.replace("{alias}", str(alias))
    assert cli("mix", src, "-a", src_ann, "-o", out, "--strategy", "raw", "--overwrite", "-q") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input shard folder" in err[0], err
    assert _tree(src) == before


def test_relations_compare_devices_and_inodes(bound):
    src, alias, _ = bound
    assert folders.relation(folders.normalize(alias), folders.normalize(src)) is None  # paths alone miss it
    assert folders.related(str(alias), str(src)) == "is"
    assert folders.related(str(alias / "x"), str(src)) == "lies inside"
    assert folders.related(str(src.parent), str(alias)) == "contains"


def test_a_run_may_enter_its_own_folder_again_but_another_thread_may_not(tmp_path):
    import threading

    out = str(tmp_path / "out")
    errors = []
    with folders.locked(out):
        with folders.locked(out):  # a run's mix inside the run: the same hold
            pass
        assert (tmp_path / "out" / folders.LOCK).exists()  # still held by the outer block

        def other():
            try:
                with folders.locked(out):
                    pass
            except Exception as e:
                errors.append(str(e))

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(errors) == 1 and "another thread" in errors[0]
    assert not (tmp_path / "out").exists()
