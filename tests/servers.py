"""Real servers on 127.0.0.1 for remote-storage tests: a threaded HTTP file server (stdlib) and
moto's S3 server. Each stops when its block ends."""
from __future__ import annotations

import contextlib
import functools
import http.server
import logging
import threading

import pytest

FAKE_AWS = {"AWS_ACCESS_KEY_ID": "recaption-test", "AWS_SECRET_ACCESS_KEY": "recaption-test",
            "AWS_DEFAULT_REGION": "us-east-1"}
AWS_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE",
             "AWS_SHARED_CREDENTIALS_FILE")


def need_http_client():
    pytest.importorskip("aiohttp", reason="aiohttp not installed: pip install 'recaption[test]' (or [http])")


def need_s3():
    pytest.importorskip("moto.server", reason="moto[server] not installed: pip install 'recaption[test]'")
    pytest.importorskip("s3fs", reason="s3fs not installed: pip install 'recaption[test]' (or [s3])")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def http_server(directory):
    """Serve `directory` read-only over HTTP; yields the base URL."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(directory)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=10)


@contextlib.contextmanager
def s3_server():
    """moto's S3 in server mode, with fake credentials in the environment; yields the endpoint."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in FAKE_AWS.items():
            mp.setenv(k, v)
        for k in AWS_UNSET:
            mp.delenv(k, raising=False)
        srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        srv.start()
        try:
            host, port = srv.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            srv.stop()


def s3_client_fs(endpoint: str):
    """An s3fs filesystem of its own (no cache shared with recaption's) to set up and inspect."""
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)


def leftovers(fs, bucket: str) -> dict:
    """What an interrupted writer may leave: temporary objects and unfinished multipart uploads."""
    tmp = [p for p in fs.find(bucket) if p.endswith(".tmp") or "/." in p]
    uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])
    return {"temp_objects": tmp, "pending_uploads": [u["Key"] for u in uploads]}
