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
    return out


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
