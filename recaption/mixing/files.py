"""The annotation files of a run, and how a pass maps a function over them.

A pass is a function of one file (and its numeric columns); a mapper runs it over every file and
gives the results back in order (`recaption.engines`: each engine has one). In process (the local
engine's threads: pyarrow and numpy release the GIL) each file's numeric columns are kept, up to
`CACHE_BYTES`, so the passes after the first need not read them again; the Ray engine's tasks
read the files where they run.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.io.atomic import listdir
from recaption.io.sources import shard_name
from recaption.mixing import columns as colmod
from recaption.mixing.columns import Columns

CACHE_BYTES = 512 << 20  # numeric columns kept between passes (about 18 bytes a row: ~30M rows)


@dataclass
class AnnFile:
    """An input shard and its annotation file."""

    name: str  # shard name
    path: str  # its annotation file
    url: str | None = None  # the input shard (None when only annotations are known)
    removed: object = None  # its duplicates and evaluation overlaps (`recaption.mixing.removal.Removed`)
    group: str | None = None  # the named caption group read as the synthetic one (None: the unnamed group)


def annotation_files(shards: list[str], ann_dir: str) -> tuple[list[AnnFile], list[str]]:
    """The annotation file of every shard that has one; the names of those that do not."""
    there = set(listdir(ann_dir))  # one listing, not a request per shard (object stores)
    present, missing = [], []
    for u in shards:
        f = AnnFile(shard_name(u), ann.path_for(ann_dir, shard_name(u)), u)
        if f.path.rsplit("/", 1)[-1] in there:
            present.append(f)
        else:
            missing.append(f.name)
    return present, missing


class Cache:
    """Per-file numeric columns kept between passes, up to a byte budget (then files are re-read)."""

    def __init__(self, budget: int = CACHE_BYTES):
        self.budget, self.used, self.cols, self.lock = budget, 0, {}, threading.Lock()

    def get(self, path: str, synthetic: bool, scores=()) -> Columns | None:
        """The cached columns of a file, if they hold what is asked (the candidates when
        `synthetic`, the score columns of `scores`)."""
        c = self.cols.get(path)
        if c is None or (synthetic and c.has_syn is None) or any(s not in c.extra for s in scores):
            return None
        return c

    def put(self, path: str, c: Columns) -> None:
        """Keep a file's columns for later passes while the budget allows; a file over it is read again."""
        with self.lock:
            if path not in self.cols and self.used + c.nbytes <= self.budget:
                self.cols[path] = c
                self.used += c.nbytes


def load(f: AnnFile, synthetic: bool, cache: Cache | None = None, filters=None, scores=None) -> Columns:
    """A file's numeric columns: from the cache, or read (and kept, if the budget allows). A cache
    belongs to one pool source, so its files were read with the same `filters` and removals.
    `scores`: {annotator score column: required} strategies cut on (`columns.read`)."""
    scores = scores or {}
    c = cache.get(f.path, synthetic, scores) if cache else None
    if c is None:
        t = read_file(f, colmod.columns_for(synthetic, filters=filters, scores=scores), counts_only=True,
                      filters=filters, scores=scores)
        c = colmod.from_table(t, filters, f.removed, scores)
        if cache:
            cache.put(f.path, c)
    return c


def read_file(f: AnnFile, columns: list[str], counts_only: bool = False, filters=None, scores=None):
    """Some columns of an annotation file; a file that cannot be read is one line naming it."""
    try:
        return colmod.read(f.path, columns, counts_only, filters, scores, f.group)
    except RecaptionError:
        raise
    except Exception as e:  # a corrupt parquet: name the file, in one line
        raise RecaptionError(f"cannot read annotation file {f.path}: {type(e).__name__}: {e}") from e
