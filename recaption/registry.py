"""One shape for every extension point (open_clip's `_MODEL_CONFIGS` / `add_model_config` /
`list_models` is the model): a `Registry` maps a name to an object (a class, a module, a
declaration), given as the object or as a "module:Name" target imported when first asked for,
with `register`, `unregister`, `names`, `get` and an entry-point group read once.

Annotators, mixing strategies, captioner backends, engines and filter-rule kinds are each one
`Registry`; the CLI reads their `names()` when a command is built, so a plugin registered at run
time or by an entry point is accepted wherever a built-in is. `load` is the one loader of
"module:Name" targets. Nothing heavy is imported here.
"""
from __future__ import annotations

import contextlib
import importlib
import re
import types
from typing import Any, Callable

from recaption.errors import RecaptionError, unknown

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def load(text: str, what: str = "target") -> Any:
    """The object a "module:Name" target names (`Name` may be dotted: "module:Class.attr"); a
    plain "module" names the module itself (an engine)."""
    module, sep, attr = str(text).partition(":")
    if not module or (sep and not attr):
        raise RecaptionError(f"{what} {text!r} is not a \"module:Name\" target (or a module)")
    try:
        obj = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise RecaptionError(f"cannot load {what} {text}: {type(e).__name__}: {e}") from None
    return obj


def target_of(obj) -> str:
    """Where a worker imports `obj` from ("module:Name"; a module: its dotted name)."""
    if isinstance(obj, str):
        return obj
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return f"{obj.__module__}:{name}"


class Registry:
    """Name -> object of one kind of extension, in registration order (built-ins first, then
    entry points of `group`, then what `register` adds at run time).

    `check(name, obj)` validates an object when it is loaded (raise RecaptionError); `meta` holds
    what a caller must know without loading the object (a help line, a backend's extras)."""

    def __init__(self, kind: str, group: str | None = None, check: Callable | None = None):
        self.kind, self.group, self.check = kind, group, check
        self._entries: dict[str, Any] = {}
        self._meta: dict[str, dict] = {}
        self._loaded: dict[str, Any] = {}
        self._builtin: set[str] = set()
        self._plugins_read = group is None
        self.changes = 0  # bumped by every change, so derived tables know when to rebuild

    # -- changing it ---------------------------------------------------------------------------
    def register(self, name: str, obj, *, builtin: bool = False, replace: bool = False, **meta) -> None:
        """Add `obj` (the object, or "module:Name") under `name`; a name already taken by another
        object is refused unless `replace`; the same object again is a no-op."""
        self._read_plugins()
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise RecaptionError(f"a {self.kind} name is letters, digits, '_', '-' and '.', got {name!r}")
        old = self._entries.get(name)
        if old is not None and not replace and not _same(old, obj):
            raise RecaptionError(f"a {self.kind} named {name!r} is registered already ({target_of(old)})")
        self._entries[name] = obj
        self._meta[name] = dict(meta)
        self._loaded.pop(name, None)
        if builtin:
            self._builtin.add(name)
        self.changes += 1

    def unregister(self, name: str) -> None:
        """Remove a registered entry (built-in ones stay); an unknown name is an error."""
        if name in self._builtin:
            raise RecaptionError(f"{self.kind} {name!r} is built in")
        if name not in self._entries:
            raise self.unknown(name)
        del self._entries[name]
        self._meta.pop(name, None)
        self._loaded.pop(name, None)
        self.changes += 1

    def ensure(self, targets: dict[str, str]) -> None:
        """Make entries known here by their targets (a worker learns what the driver registered at
        run time, which its own imports did not register)."""
        self._read_plugins()
        for name, t in targets.items():
            if name not in self._entries:
                self.register(name, t)

    # -- reading it ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        self._read_plugins()
        return list(self._entries)

    def __contains__(self, name) -> bool:
        self._read_plugins()
        return name in self._entries

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def get(self, name: str):
        """The object registered as `name`, loaded (and checked) on first use."""
        self._read_plugins()
        if name not in self._entries:
            raise self.unknown(name)
        if name not in self._loaded:
            entry = self._entries[name]
            obj = load(entry, f"{self.kind} {name!r}") if isinstance(entry, str) else entry
            if self.check is not None:
                self.check(name, obj)
            self._loaded[name] = obj
        return self._loaded[name]

    def items(self) -> list[tuple[str, Any]]:
        """(name, loaded object) of every entry, in order."""
        return [(n, self.get(n)) for n in self.names()]

    def meta(self, name: str) -> dict:
        """What was registered with `name` besides its object (a help line...)."""
        if name not in self:
            raise self.unknown(name)
        return self._meta.get(name, {})

    def target(self, name: str) -> str:
        """Where a worker imports the entry from ("module:Name")."""
        if name not in self:
            raise self.unknown(name)
        entry = self._entries[name]
        return entry if isinstance(entry, str) else target_of(entry)

    def is_builtin(self, name: str) -> bool:
        """Whether `name` is one of the package's own entries."""
        return name in self._builtin

    def unknown(self, name, extra: str = "") -> RecaptionError:
        """The one-line error for a name not registered: the nearest known ones, then all."""
        return unknown(self.kind, name, list(self._entries), extra)

    def read_plugins(self) -> None:
        """Read the entry-point group again (a package installed since this process first read it)."""
        self._plugins_read = self.group is None
        self._read_plugins()

    @contextlib.contextmanager
    def saved(self):
        """Whatever is registered or unregistered inside is undone on leaving (tests, trials)."""
        state = (dict(self._entries), dict(self._meta), dict(self._loaded), set(self._builtin), self._plugins_read)
        try:
            yield self
        finally:
            self._entries, self._meta, self._loaded, self._builtin, self._plugins_read = state
            self.changes += 1

    def _read_plugins(self) -> None:
        """Entries installed packages declare in this registry's entry-point group, read once."""
        if self._plugins_read:
            return
        self._plugins_read = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            if ep.name not in self._entries:
                self._entries[ep.name] = ep.value
                self._meta[ep.name] = {}
                self.changes += 1


def _same(a, b) -> bool:
    return a is b or a == b or target_of(a) == target_of(b)
