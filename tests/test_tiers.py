"""Issue 33.6: tiers that mean it. Every test that starts Ray, a browser, a wheel build, a
subprocess of a trainer or CLI is marked slow, so `make test-fast` leaves it out. Found from the
tests' own code: a Ray fixture, the Chromium helpers, `subprocess` or `pip wheel`."""
from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent
STARTS = {"ray_local": "Ray", "find_chromium": "a browser", "render_dom": "a browser", "subprocess": "a process"}


def _is_slow_mark(node) -> bool:
    text = ast.unparse(node)
    return text.endswith("mark.slow") or "mark.slow" in text


def _needs(fn: ast.FunctionDef) -> set[str]:
    """What a test starts: its fixtures and the names its body uses."""
    used = {a.arg for a in fn.args.args} | {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
    used |= {n.value for n in ast.walk(fn) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return {STARTS[k] for k in STARTS if k in used}


def _fully_slow(fn: ast.FunctionDef, module_slow: bool) -> bool:
    return module_slow or any(_is_slow_mark(d) for d in fn.decorator_list)


def _slow_where_it_starts(fn: ast.FunctionDef) -> bool:
    """A parametrized test whose Ray case only is marked (`pytest.param("ray", marks=...slow)`)."""
    return any("pytest.param" in ast.unparse(d) and "mark.slow" in ast.unparse(d) for d in fn.decorator_list)


def test_every_test_that_starts_something_heavy_is_marked_slow():
    unmarked = []
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        module_slow = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                          and _is_slow_mark(n.value) for n in tree.body)
        for fn in [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]:
            if path == Path(__file__) or not _needs(fn):
                continue
            if not (_fully_slow(fn, module_slow) or _slow_where_it_starts(fn)):
                unmarked.append(f"{path.relative_to(TESTS)}::{fn.name} starts {', '.join(sorted(_needs(fn)))}")
    assert not unmarked, "mark these @pytest.mark.slow:\n" + "\n".join(unmarked)


def test_the_check_finds_what_it_looks_for():
    """The walk sees an unmarked Ray test (so the check above can fail)."""
    fn = ast.parse("def test_x(ray_local):\n    pass\n").body[0]
    assert _needs(fn) == {"Ray"} and not _fully_slow(fn, False)
