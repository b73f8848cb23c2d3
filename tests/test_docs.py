"""The documentation a clone ships: every relative link resolves to a file inside the repository,
every #anchor to a heading of its target, and nothing points outside the repository."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "eval" / "README.md", ROOT / "recaption" / "ARCHITECTURE.md",
        *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def _prose(text: str) -> str:
    """The markdown that renders as prose: code blocks, comments and code spans removed."""
    return _CODE.sub("", _COMMENT.sub("", _FENCE.sub("", text)))


def anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lowercased, punctuation dropped, spaces as '-', repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for h in _HEADING.findall(_COMMENT.sub("", _FENCE.sub("", md.read_text(encoding="utf-8")))):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", h).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def link_problems(md: Path, root: Path = ROOT) -> list[str]:
    """Every relative link of `md` that does not land on a file (and heading) inside `root`."""
    problems = []
    for target in _LINK.findall(_prose(md.read_text(encoding="utf-8"))):
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        if path.startswith("/"):
            problems.append(f"{target}: an absolute path, not a file of the repository")
            continue
        dest = (md.parent / unquote(path)).resolve() if path else md.resolve()
        if not dest.is_relative_to(root.resolve()):
            problems.append(f"{target}: outside the repository")
        elif not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            problems.append(f"{target}: no heading with anchor #{anchor}")
    return problems


@pytest.mark.parametrize("md", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_inside_the_repo(md):
    assert link_problems(md) == []


@pytest.mark.parametrize("md", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_citation_of_a_file_outside_the_repo(md):
    text = md.read_text(encoding="utf-8")
    assert not re.search(r"\bSPEC\b|shared/", text), "cite docs/formats.md, which ships with the repo"


def test_readme_and_architecture_link_the_formats():
    for md in (ROOT / "README.md", ROOT / "recaption" / "ARCHITECTURE.md"):
        assert "docs/formats.md" in " ".join(_LINK.findall(_prose(md.read_text(encoding="utf-8")))), md


def test_the_checker_catches_bad_links(tmp_path):
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "a.md").write_text("# Title\n\n## Keeping a fraction\n\n## Keeping a fraction\n")
    md = repo / "README.md"
    md.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#keeping-a-fraction) [ok](docs/a.md#keeping-a-fraction-1) [ok](#top)\n"
        "[web](https://example.com/x) `[code](nowhere.md)`\n\n```\n[fenced](nowhere.md)\n```\n"
        "[gone](docs/b.md) [up](../outside.md) [abs](/etc/passwd) [anchor](docs/a.md#nope)\n\n# Top\n"
    )
    (tmp_path / "outside.md").write_text("# Out\n")
    assert [p.split(":")[0] for p in link_problems(md, repo)] == [
        "docs/b.md", "../outside.md", "/etc/passwd", "docs/a.md#nope"]


def test_the_how_to_add_section_names_files_that_exist():
    """recaption/ARCHITECTURE.md says, per kind of extension, which files it touches: each named
    file exists, and the count stays small (an annotator 3, a strategy 2, an engine 3)."""
    text = (ROOT / "recaption" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("## How to add...", 1)[1].split("\n## ", 1)[0]
    item = re.compile(r"^\* \*\*(.+?)\*\*(.*?)(?=^\* \*\*|\Z)", re.M | re.S)
    items = {m.group(1): m.group(2) for m in item.finditer(section)}
    assert {"A captioner backend", "An annotator", "A filter rule", "A mixing strategy", "A storage backend",
            "An engine"} <= {k.split(" (")[0].rstrip(":") for k in items}
    named = {}
    for kind, body in items.items():
        paths = set(re.findall(r"`((?:recaption|tests|docs)/[\w/.-]+|pyproject\.toml)`", body))
        for p in paths:
            if "NAME" not in p:
                assert (ROOT / p).exists(), f"{kind}: {p} does not exist"
        named[kind.split(" (")[0].rstrip(":")] = {p for p in paths if not p.startswith("tests/")}
    # the files a new extension of each kind touches (its own module counts, tests do not)
    assert len(named["An annotator"] - {"recaption/annotators/base.py"}) <= 3, named["An annotator"]
    assert len(named["A mixing strategy"] - {"recaption/mixing/strategies/base.py"}) <= 2, named["A mixing strategy"]
    assert len(named["An engine"] - {"recaption/stages/__init__.py"}) <= 3, named["An engine"]


def _table_names(section: str) -> set[str]:
    """The first-column names of the table(s) under README's heading `section`, up to the next heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"\n{section}\n", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", body, re.M))


def test_the_recipe_and_preset_tables_name_every_registered_one():
    from recaption.captioners.base import list_presets
    from recaption.recipes import list_recipes

    assert set(list_recipes()) - _table_names("### Recipes (`recaption recipes`)") == set()
    assert set(list_presets()) - _table_names("### Captioner presets (`recaption models`)") == set()
