"""Heads as data: a small network over a CLIP image embedding (or over pixels) that gives one tag
per image, declared by a mapping (heads.yaml, or a YAML file of one's own) beside its weights file.

A declaration names its tag column, its architecture (`arch.ARCHS`), its input (`clip`: the L2-
normalised image embedding of one CLIP model and pretrained tag, `dim` wide; `pixels`: a resize
and normalisation), which output is the score (`sigmoid`, `softmax:I`, `identity`), the file name
its weights are published under, and its source. Nothing heavy is imported here: `recaption
models` and `--help` read the declarations.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from recaption.errors import RecaptionError
from recaption.registry import Registry

HERE = Path(__file__).parent
INPUTS = ("clip", "pixels")
KEYS = {"name", "tag", "arch", "input", "clip", "dim", "normalize", "output", "weights", "source", "pixels"}


@dataclass(frozen=True)
class Head:
    """One head's declaration (see the module's docstring)."""

    name: str
    tag: str
    arch: str
    input: str
    output: str
    weights: str
    source: str = ""
    clip_model: str | None = None
    clip_pretrained: str | None = None
    dim: int | None = None
    normalize: str = "l2"
    pixels: dict = field(default_factory=dict)
    path: str | None = None  # the declaration file of a head given by path (None: built in)

    def __post_init__(self):
        from recaption.scoring.heads.arch import ARCHS

        if self.input not in INPUTS:
            raise RecaptionError(f"head {self.name}: input must be one of {', '.join(INPUTS)}, got {self.input!r}")
        if self.arch not in ARCHS:
            raise ARCHS.unknown(self.arch, f" (the arch of head {self.name})")
        if self.input == "clip" and not (self.clip_model and self.dim):
            raise RecaptionError(f"head {self.name}: a clip head names its clip model and its input dim")
        kind, _, index = self.output.partition(":")
        if kind not in ("sigmoid", "softmax", "identity") or (kind == "softmax") != index.isdigit():
            raise RecaptionError(f"head {self.name}: output is sigmoid, softmax:INDEX or identity, got {self.output!r}")

    def clip_id(self) -> str | None:
        """How the head's CLIP is written in its column's record: MODEL/PRETRAINED."""
        if self.input != "clip":
            return None
        return self.clip_model if not self.clip_pretrained else f"{self.clip_model}/{self.clip_pretrained}"

    def record(self) -> dict:
        """What a tag column records of the head that produced it (its group settings)."""
        out = {"head": self.name, "arch": self.arch, "output": self.output}
        if self.path:
            out["declaration"] = os.path.realpath(self.path)
        if self.input == "clip":
            out |= {"clip": self.clip_id(), "input": f"{self.normalize}-normalised CLIP image embedding ({self.dim})"}
        else:
            out["input"] = dict(self.pixels)
        return out


def from_mapping(name: str, d: dict, path: str | None = None) -> Head:
    """A declaration mapping -> Head (unknown keys refused, naming the known ones)."""
    if not isinstance(d, dict):
        raise RecaptionError(f"head {name}: its declaration must be a mapping")
    bad = set(d) - KEYS
    if bad:
        raise RecaptionError(f"head {name}: unknown keys {sorted(bad)}; known: {sorted(KEYS)}")
    missing = {"tag", "arch", "input", "output", "weights"} - set(d)
    if missing:
        raise RecaptionError(f"head {name}: its declaration lacks {sorted(missing)}")
    clip = d.get("clip") or {}
    return Head(name=str(d.get("name", name)), tag=d["tag"], arch=d["arch"], input=d["input"], output=str(d["output"]),
                weights=str(d["weights"]), source=str(d.get("source", "")), clip_model=clip.get("model"),
                clip_pretrained=clip.get("pretrained"), dim=d.get("dim"), normalize=d.get("normalize", "l2"),
                pixels=dict(d.get("pixels") or {}), path=path)


def _builtin() -> dict:
    import yaml

    return yaml.safe_load((HERE / "heads.yaml").read_text())


def _check(name, obj) -> None:
    if not isinstance(obj, Head):
        raise RecaptionError(f"head {name!r}: {obj!r} is not a Head declaration")


HEADS = Registry("head", "recaption.heads", _check)
_loaded = False


def _ensure() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for name, d in _builtin().items():
            HEADS.register(name, from_mapping(name, d), builtin=True)


def names(tag: str | None = None) -> list[str]:
    """The registered heads' names (of one tag's where given), in order."""
    _ensure()
    return [n for n in HEADS.names() if tag is None or HEADS.get(n).tag == tag]


def get(name: str) -> Head:
    """A registered head (an unknown name: one line with the nearest ones)."""
    _ensure()
    return HEADS.get(name)


def resolve(ref: str, tag: str) -> Head:
    """A head by name, or from a declaration file (YAML, one mapping); it must give `tag`."""
    _ensure()
    if ref in HEADS:
        head = HEADS.get(ref)
    elif ref.endswith((".yaml", ".yml")) or os.path.isfile(ref):
        import yaml

        if not os.path.isfile(ref):
            raise RecaptionError(f"head declaration not found: {ref}")
        try:
            d = yaml.safe_load(Path(ref).read_text())
        except yaml.YAMLError as e:
            raise RecaptionError(f"head declaration {ref} is not valid YAML: {e}") from None
        head = from_mapping(Path(ref).stem, d, path=ref)
    else:
        raise HEADS.unknown(ref, " (or a head declaration file, NAME.yaml)")
    if head.tag != tag:
        raise RecaptionError(f"head {head.name} gives {head.tag}, not {tag} (heads of {tag}: {', '.join(names(tag))})")
    return head


def weights_path(head: Head, given: str | None) -> str:
    """The local file of a head's weights: a path as given, `hf-hub:ORG/REPO[/FILE]` fetched into the
    hub cache (FILE defaults to the declared file name), else the declared file name beside a
    head's own declaration file. One line naming the published file where none is given."""
    if given and given.startswith("hf-hub:"):
        repo = given[len("hf-hub:"):]
        parts = repo.split("/")
        repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:]) or head.weights
        from huggingface_hub import hf_hub_download

        try:
            return hf_hub_download(repo_id, filename)
        except Exception as e:
            raise RecaptionError(f"head {head.name}: cannot fetch {filename} from {repo_id}: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if given:
        p = os.path.expanduser(given)
        if not os.path.isfile(p):
            raise RecaptionError(f"head {head.name}: weights file not found: {given}")
        return p
    if head.path:
        beside = Path(head.path).parent / head.weights
        if beside.is_file():
            return str(beside)
    raise RecaptionError(f"head {head.name} needs its weights file ({head.weights}; {head.source.split(':')[0]}): "
                         "give it as a path or hf-hub:ORG/REPO/FILE")


def sha256(path: str) -> str:
    """A weights file's sha256, as the tag's record keeps it (the same name with other weights is refused)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
