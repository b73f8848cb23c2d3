"""The package keeps the shape recaption/ARCHITECTURE.md draws. Imports go one way, down the data
path: a package imports only packages of a lower layer, lazy imports inside functions included, so
io knows no model, stages never reach for an engine, and nothing below the CLI imports it. And
every public definition says in a line what it is for."""
import ast
from pathlib import Path

import recaption

PACKAGE = Path(recaption.__file__).parent

LAYERS = [
    {"errors"},
    {"resources", "models", "progress"},
    {"io"},
    {"captioners", "scoring"},
    {"annotators"},
    {"mixing"},
    {"stages", "engines", "recipes", "report", "webdataset"},
    {"api", "train_open_clip"},
    {"demo"},
    {"cli", "testing", "__main__"},
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
