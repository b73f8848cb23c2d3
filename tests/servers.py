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


class _Hostile(http.server.BaseHTTPRequestHandler):
    """Serves files of `directory` the ways servers fail: /500/NAME always answers 500,
    /flaky/NAME answers 500 to its first `flaky` requests, /noclen/NAME sends the file without a
    Content-Length (the end of the body is the end of the connection), /stall/NAME sends its
    headers and half the file, then nothing until the server stops (bounded: `stall_s`)."""

    protocol_version = "HTTP/1.0"  # a body without Content-Length ends when the connection does
    directory = "."
    hits: dict = {}
    flaky = 2
    stall_s = 30.0
    stop: threading.Event = threading.Event()

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _answer(self, body: bool):
        import os

        _, mode, name = self.path.split("/", 2)
        key = (mode, name)
        self.hits[key] = self.hits.get(key, 0) + 1
        path = os.path.join(self.directory, name)
        if mode == "500" or (mode == "flaky" and self.hits[key] <= self.flaky) or not os.path.isfile(path):
            self.send_response(500 if os.path.isfile(path) else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with open(path, "rb") as f:
            data = f.read()
        self.send_response(200)
        if mode in ("flaky",):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not body:
            return
        if mode == "stall":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.stop.wait(self.stall_s)
            return
        self.wfile.write(data)


@contextlib.contextmanager
def hostile_http_server(directory, flaky: int = 2):
    """A loopback server of the failures `_Hostile` names; yields (base URL, hits per (mode, name))."""
    hits: dict = {}
    stop = threading.Event()
    handler = type("Hostile", (_Hostile,), {"directory": str(directory), "hits": hits, "flaky": flaky, "stop": stop})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", hits
    finally:
        stop.set()
        srv.shutdown()
        srv.server_close()
        t.join(timeout=10)
