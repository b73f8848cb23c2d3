"""`both`: as `raw`, and the synthetic caption in `syn.txt` (docs/formats.md#mixing-strategies)."""
from __future__ import annotations

from recaption.mixing.strategies.raw import Raw


class Both(Raw):
    """`raw`'s decisions; a kept sample with a synthetic caption also gets it as `syn.txt`."""

    extra_members = {"syn.txt": "synthetic_caption"}
