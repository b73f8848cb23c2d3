"""Where data files live: `recaption.prompts` (the repository's prompts/ folder: mask lists, VLM
templates), presets and recipes, all read through importlib.resources so an installed wheel has them."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from recaption.errors import RecaptionError, unknown

PACKAGE = Path(__file__).resolve().parent


def prompts_dir():
    """The prompts folder as an importlib.resources Traversable."""
    here = PACKAGE.parent / "prompts"
    if (here / "masks").is_dir() and (PACKAGE.parent / "pyproject.toml").is_file():
        # a source checkout imported from its own folder: its prompts, not those an editable install
        # of another checkout maps `recaption.prompts` to
        return here
    try:
        root = resources.files("recaption.prompts")
    except ModuleNotFoundError:
        root = None
    if root is None or not root.joinpath("masks").is_dir():
        raise RecaptionError("cannot find recaption's prompt files (recaption.prompts); reinstall recaption")
    return root


def named_or_path(kind: str, name: str, suffix: str):
    """A name from `prompts/<kind>/` (without suffix) or a path to a user's own file."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    folder = prompts_dir().joinpath(kind)
    cand = folder.joinpath(f"{name}{suffix}")
    if cand.is_file():
        return cand
    choices = sorted(x.name[: -len(suffix)] for x in folder.iterdir() if x.name.endswith(suffix))
    raise unknown(kind[:-1], name, choices, ", or a file of your own")


def sample_shards_dir() -> Path:
    """The bundled sample shards (used by `recaption demo`)."""
    return PACKAGE / "data" / "sample-shards"
