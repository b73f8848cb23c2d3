"""The package keeps the shape recaption/ARCHITECTURE.md draws. Imports go one way, down the data
path: a package imports only packages of a lower layer, lazy imports inside functions included, so
io knows no model, engines know no model and no mixing, stages never reach for an engine, and
nothing below the CLI imports it. Inside a package, modules import each other without a loop. And
every public definition says in a line what it is for."""
import ast
from pathlib import Path

import recaption

PACKAGE = Path(recaption.__file__).parent

LAYERS = [
    {"errors"},
    {"resources", "models", "progress", "declare", "registry"},
    {"io"},
    {"captioners", "scoring", "engines"},
    {"annotators"},
    {"dedup", "output"},  # libraries below the mix: no pool, no strategy
    {"mixing"},
    {"overlay"},  # the read side: decisions the mix made, applied as samples are read
    {"stages", "recipes", "report", "webdataset"},
    {"results"},  # what the verbs return: it opens reports, the API builds it
    {"api", "train_open_clip"},
    {"demo"},
    {"cli", "testing"},
    {"__main__"},  # `python -m recaption`: the command line, run
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def imported(tree: ast.AST) -> set[str]:
    """The top-level recaption packages a module imports, anywhere in it."""
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module and n.module.split(".")[0] == "recaption":
            parts = n.module.split(".")
            out |= {parts[1]} if len(parts) > 1 else {a.name for a in n.names}
        elif isinstance(n, ast.Import):
            out |= {a.name.split(".")[1] for a in n.names if a.name.startswith("recaption.")}
    return out


# Pairs that the layers would allow but the design forbids: the stages are what engines run, so
# they never reach for one (an engine hands a stage its CPU share through `set_threads`), and
# annotators are built inside whichever engine's worker.
NEVER = {("stages", "engines"), ("annotators", "engines")}

# The mix reaches the duplicate rules through one bridge (its options are read by MixConfig too).
DEDUP_BRIDGES = {"recaption.mixing.removal", "recaption.mixing.config"}  # config: MixConfig


def test_every_package_has_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert tops - {"prompts"} <= set(RANK), f"place these in LAYERS: {sorted(tops - set(RANK) - {'prompts'})}"


def test_imports_only_go_down():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        top = rel.parts[0].removesuffix(".py")
        if top == "__init__" or top not in RANK:
            continue
        for other in imported(ast.parse(path.read_text())) - {top}:
            if RANK.get(other, -1) >= RANK[top]:
                upward.append(f"{rel} imports recaption.{other}")
    assert not upward, "\n".join(upward)


def test_forbidden_pairs_are_absent():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for other in imported(ast.parse(path.read_text())):
            if (top, other) in NEVER:
                found.append(f"{path.relative_to(PACKAGE)} imports recaption.{other}")
    assert not found, "\n".join(found)


def test_the_mix_reaches_dedup_through_its_bridge():
    found = []
    for path in sorted((PACKAGE / "mixing").rglob("*.py")):
        tree = ast.parse(path.read_text())
        if "dedup" in imported(tree) and module_name(path) not in DEDUP_BRIDGES:
            found.append(module_name(path))
    assert not found, f"only {sorted(DEDUP_BRIDGES)} may import recaption.dedup: {found}"


def private_imports(tree: ast.AST, own: str) -> list[str]:
    """`module._name` for each underscore name a module imports from another recaption module."""
    return [f"{n.module}.{a.name}" for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.level == 0 and (n.module or "").startswith("recaption")
            and n.module != own for a in n.names if a.name.startswith("_") and not a.name.startswith("__")]


def test_no_module_imports_another_modules_private_names():
    found = [f"{module_name(p)} imports {name}" for p in sorted(PACKAGE.rglob("*.py"))
             for name in private_imports(ast.parse(p.read_text()), module_name(p))]
    assert not found, "make these public, or move them where both sides may import them:\n" + "\n".join(found)


def test_the_private_check_sees_one():
    tree = ast.parse("from recaption.output.members import READ, _finite\n")
    assert private_imports(tree, "recaption.overlay.reader") == ["recaption.output.members._finite"]


def module_name(path: Path) -> str:
    """`recaption.mixing.columns` for recaption/mixing/columns.py (a package by its __init__)."""
    parts = ("recaption",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """The recaption modules a module imports, anywhere in it (`from pkg import mod` counts mod)."""
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module and n.module.startswith("recaption"):
            for a in n.names:
                sub = f"{n.module}.{a.name}"
                out.add(sub if sub in modules else n.module)
        elif isinstance(n, ast.Import):
            out |= {a.name for a in n.names if a.name.startswith("recaption.")}
    return out & modules


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of a graph (its strongly connected components of more than one module)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_inside_a_package():
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: {o for o in module_imports(ast.parse(p.read_text()), set(paths)) if o != m}
             for m, p in paths.items()}
    # a package's submodules may use its __init__ (the registry they belong to); the reverse goes
    # through the registry's names, not an import, so a cycle is a loop between modules
    found = [c for c in cycles(graph)]
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_check_finds_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_check_sees_a_lazy_import():
    tree = ast.parse("def f():\n    from recaption.engines import cpu_cores\n")
    assert imported(tree) == {"engines"}


def undocumented(tree: ast.Module) -> list[str]:
    """Public modules, classes, functions and methods without a docstring."""
    out = [] if ast.get_docstring(tree) else ["module"]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            if not ast.get_docstring(node):
                out.append(node.name)
            if isinstance(node, ast.ClassDef):
                out += [f"{node.name}.{m.name}" for m in node.body
                        if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))
                        and not m.name.startswith("_") and not ast.get_docstring(m)]
    return out


def test_public_definitions_say_what_they_are_for():
    missing = [f"{p.relative_to(PACKAGE)}: {name}" for p in sorted(PACKAGE.rglob("*.py"))
               for name in undocumented(ast.parse(p.read_text()))]
    assert not missing, "one-line docstrings wanted:\n" + "\n".join(missing)


def test_the_docstring_check_sees_a_method():
    tree = ast.parse('"""m"""\nclass A:\n    """a"""\n    def run(self):\n        pass\n')
    assert undocumented(tree) == ["A.run"]
