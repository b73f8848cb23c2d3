"""The one door to fsspec: every read, write and listing in recaption opens its filesystem here.

It holds the process's storage options (what `--storage-options` gives: endpoint, profile,
anonymous access, ...), applies them to every URL, and turns a missing filesystem package into
one line naming the extra to install. Engines copy the options into their workers.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os

from recaption.errors import MissingExtra, RecaptionError

# protocol -> (package, extra): what `pip install 'recaption[extra]'` brings
EXTRAS = {
    "s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
    "http": ("aiohttp", "http"), "https": ("aiohttp", "http"),
}
# Stores where an upload is all-or-nothing and a rename is a server-side copy plus a delete.
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "oci", "hf"}
LOCAL = {"file", "local"}
HTTP = {"http", "https"}
# HTTP defaults (docs/formats.md#remote-reads); each is a key of the http storage options.
HTTP_DEFAULTS = {"tries": 3, "backoff": 1.0, "read_timeout": 60.0, "connect_timeout": 30.0}

_options: dict = {}


def parse_options(value) -> dict:
    """Storage options from a dict, JSON text, or a JSON/YAML file holding either."""
    if value is None:
        return {}
    if isinstance(value, dict):
        out = value
    else:
        text = str(value).strip()
        if text.startswith("{"):
            try:
                out = json.loads(text)
            except json.JSONDecodeError as e:
                raise RecaptionError(f"--storage-options is not valid JSON ({e.msg} at char {e.pos})") from e
        else:
            path = os.path.expanduser(text)
            if not os.path.isfile(path):
                raise RecaptionError(f"--storage-options {text!r} is neither JSON text nor a file")
            import yaml  # YAML is a superset of JSON: one parser reads both kinds of file

            try:
                with open(path, encoding="utf-8") as f:
                    out = yaml.safe_load(f)
            except (OSError, yaml.YAMLError) as e:
                raise RecaptionError(f"cannot read storage options from {text}: {e}") from e
    if not isinstance(out, dict):
        raise RecaptionError("storage options must be a mapping of fsspec options, e.g. "
                             '{"endpoint_url": "https://..."} or {"s3": {"profile": "x"}, "gcs": {...}}')
    return out


def set_options(value) -> None:
    """Make `value` (dict, JSON text or file) the options every later read and write uses."""
    global _options
    _options = parse_options(value)


def get_options() -> dict:
    """The options in force, as a plain dict (engines hand it to their workers)."""
    return dict(_options)


@contextlib.contextmanager
def using(value):
    """Apply storage options for a block; None keeps the ones in force (nested API calls)."""
    if value is None:
        yield
        return
    global _options
    before = _options
    _options = parse_options(value)
    try:
        yield
    finally:
        _options = before


def scoped(fn):
    """Run an API function under its `storage_options=` argument."""
    @functools.wraps(fn)
    def inner(*a, **kw):
        with using(kw.get("storage_options")):
            return fn(*a, **kw)

    return inner


def _protocol(url: str) -> str:
    import fsspec.core

    return fsspec.core.split_protocol(url)[0] or "file"


def _class_for(protocol: str):
    import fsspec

    try:
        return fsspec.get_filesystem_class(protocol)
    except ImportError as e:
        if protocol in EXTRAS:
            pkg, extra = EXTRAS[protocol]
            raise MissingExtra(f"{pkg} (needed for {protocol}:// paths)", extra) from e
        raise RecaptionError(f"{protocol}:// paths need a package that is not installed: {e}") from e
    except ValueError as e:
        raise RecaptionError(f"unknown storage protocol {protocol!r}: {e}") from e


def _keyed(opts: dict) -> bool:
    """Options keyed by protocol ({"s3": {...}, "gcs": {...}}), as opposed to one flat set."""
    import fsspec

    known = set(fsspec.available_protocols())
    return bool(opts) and all(k in known and isinstance(v, dict) for k, v in opts.items())


def options_for(protocol: str) -> dict:
    """The options one protocol gets: its own entry (or its aliases'), or the flat set; none for
    local files."""
    cls = _class_for(protocol)
    names = cls.protocol if isinstance(cls.protocol, (tuple, list)) else (cls.protocol,)
    if protocol in LOCAL or LOCAL & set(names):
        return {}
    if _keyed(_options):
        out: dict = {}
        for name in (*names, protocol):
            out.update(_options.get(name, {}))
    else:
        out = dict(_options)
    if protocol in OBJECT_STORES or OBJECT_STORES & set(names):
        # A listing cached in this process would hide files other workers wrote since (resume
        # and mix read folders that other processes fill), so listings are always fresh.
        out.setdefault("use_listings_cache", False)
    if protocol in HTTP or HTTP & set(names):
        out = _http_client(out)
    return out


def http_settings(opts: dict | None = None) -> dict:
    """recaption's own HTTP keys (tries, backoff, read_timeout, connect_timeout) in force: the
    defaults, overridden by the http storage options."""
    opts = _http_options() if opts is None else opts
    out = dict(HTTP_DEFAULTS)
    for k, default in HTTP_DEFAULTS.items():
        if k in opts:
            v = opts[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < (1 if k == "tries" else 0):
                raise RecaptionError(f"storage option {k!r} for http takes a number"
                                     f"{' of at least 1' if k == 'tries' else ''}, got {v!r}")
            out[k] = type(default)(v)
    return out


def _http_options() -> dict:
    if _keyed(_options):
        return {**_options.get("http", {}), **_options.get("https", {})}
    return dict(_options)


def _http_client(opts: dict) -> dict:
    """fsspec's HTTP options with aiohttp's own means of bounding a read: a client middleware
    that retries GET and HEAD on 5xx answers and connection errors with exponential backoff, and
    a socket read timeout, so a stalled server costs `read_timeout` seconds, not forever."""
    import aiohttp

    cfg = http_settings(opts)
    out = {k: v for k, v in opts.items() if k not in HTTP_DEFAULTS}
    ck = dict(out.get("client_kwargs") or {})
    ck.setdefault("timeout", aiohttp.ClientTimeout(total=None, sock_connect=cfg["connect_timeout"],
                                                   sock_read=cfg["read_timeout"]))
    ck["middlewares"] = (*ck.get("middlewares", ()), _Retry(int(cfg["tries"]), cfg["backoff"]))
    out["client_kwargs"] = ck
    return out


class _Retry:
    """aiohttp client middleware: a GET or HEAD answered 5xx, or whose connection failed, is
    tried again after backoff, 2*backoff, ... seconds, `tries` times in all. Its repr is its
    settings, so fsspec's instance cache sees equal options as equal."""

    def __init__(self, tries: int, backoff: float):
        self.tries, self.backoff = tries, backoff

    def __repr__(self):
        return f"_Retry(tries={self.tries}, backoff={self.backoff})"

    def __eq__(self, other):
        return isinstance(other, _Retry) and repr(self) == repr(other)

    def __hash__(self):
        return hash(repr(self))

    async def __call__(self, request, handler):
        """Send the request, again after a 5xx answer or a connection error."""
        import asyncio

        import aiohttp

        if request.method not in ("GET", "HEAD"):
            return await handler(request)
        for attempt in range(self.tries):
            last = attempt == self.tries - 1
            try:
                resp = await handler(request)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
                if last:
                    raise
            else:
                if resp.status < 500 or last:
                    return resp
                resp.release()
            await asyncio.sleep(self.backoff * 2 ** attempt)
        raise AssertionError("unreachable: the last try returns or raises")


def describe_remote_error(e: BaseException, url: str) -> str | None:
    """A failed HTTP read in words that name what happened (`HTTP 500 from URL after 3 tries`,
    a read timeout, a refused connection); None when `e` is no HTTP client error."""
    import sys

    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is None or not str(url).startswith(("http://", "https://")):
        return None
    chain, x = [], e
    while x is not None and len(chain) < 8:
        chain.append(x)
        x = x.__cause__ or x.__context__
    cfg = http_settings()
    tries = int(cfg["tries"])
    for x in chain:
        if isinstance(x, aiohttp.ClientResponseError):
            retried = x.status >= 500 and tries > 1
            return f"HTTP {x.status} from {url}" + (f" after {tries} tries" if retried else "")
        if isinstance(x, aiohttp.ServerTimeoutError) or isinstance(x, TimeoutError):
            return f"no data from {url} for {cfg['read_timeout']:g} s: the read timeout, storage option read_timeout"
        if isinstance(x, aiohttp.ClientPayloadError):
            return f"the transfer from {url} broke off ({x})"
        if isinstance(x, aiohttp.ClientError):
            return f"cannot reach {url} after {tries} tries ({type(x).__name__}: {x})"
    return None


def exists(url: str) -> bool:
    """Whether a URL names something; over HTTP only a 404 or 410 says no (a 5xx or a dropped
    connection is left for the read to report, with its status)."""
    fs, path = fs_for(url)
    if not (protocols(fs) & HTTP):
        return fs.exists(path)
    import aiohttp

    try:
        return fs.exists(path, strict=True)
    except FileNotFoundError:
        return False
    except aiohttp.ClientResponseError as e:
        return e.status not in (404, 410)
    except (aiohttp.ClientError, OSError):
        return True


def fs_for(url: str):
    """(filesystem, path) for a URL or local path, with the storage options in force."""
    import fsspec.core

    url = os.fspath(url)
    if "::" in url:  # chained URL: fsspec routes options keyed by protocol to each link
        links = [_protocol(b) if "://" in b else b for b in url.split("::")]
        # flat options belong to the store at the end of the chain, not to caches in front of it
        use = links if _keyed(_options) else links[-1:]
        kw = {p: o for p in use if (o := options_for(p))}
    else:
        kw = options_for(_protocol(url))
    try:
        return fsspec.core.url_to_fs(url, **kw)
    except ImportError as e:
        _class_for(_protocol(url))  # names the extra when the protocol has one
        raise RecaptionError(f"cannot open {url}: {e}") from e


def open_url(url: str, mode: str = "rb", **kw):
    """Open a URL as a file object (a context manager) with the storage options in force."""
    fs, path = fs_for(url)
    return fs.open(path, mode, **kw)


def protocols(fs) -> set[str]:
    """The protocol names of a URL's filesystem (s3 and its aliases, file, ...)."""
    p = fs.protocol
    return set(p) if isinstance(p, (tuple, list)) else {p}


def is_object_store(fs) -> bool:
    """True where a single upload is atomic and a rename would be a copy plus a delete."""
    return bool(protocols(fs) & OBJECT_STORES)


def is_local(fs) -> bool:
    """Whether a URL is on the local filesystem."""
    return bool(protocols(fs) & LOCAL)


def hide_secrets(argv: list[str]) -> list[str]:
    """A command line fit for a summary file: inline storage options (keys, tokens) hidden."""
    out, hide = [], False
    for a in argv:
        if hide and a.lstrip().startswith("{"):
            a = "<hidden>"
        elif a.startswith("--storage-options=") and a.split("=", 1)[1].lstrip().startswith("{"):
            a = "--storage-options=<hidden>"
        out.append(a)
        hide = a == "--storage-options"
    return out
