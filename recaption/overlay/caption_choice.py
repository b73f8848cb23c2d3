"""Choose a kept sample's `txt` among its caption keys as it is read (the overlay readers), so a
trainer that reads only `txt` trains on several captions without a rewrite.

The rule is open_clip's for `--json-text-key 'K1;K2' --json-text-key-probs P1 P2`: keys with a
positive weight are drawn in proportion to their weights among those the sample has (a key it
lacks, or holds only whitespace in, does not count); where it has none of them, the first key
with no weight (or a zero one) that it has, in the order given; where it has no key at all, `txt`
stays as the mix wrote it. Unlike open_clip's draw, which uses the worker's random state, the
draw here is a hash of the seed, the shard's name, the sample's key and the epoch: the same
sample gets the same caption in the same epoch, whichever worker reads it and in whatever order.
"""
from __future__ import annotations

import hashlib
import math

from recaption.errors import RecaptionError
from recaption.output import caption_keys


class CaptionChoice:
    """Which caption key each sample's `txt` takes: the keys in order, their weights, a seed."""

    def __init__(self, keys, probs=None, seed: int = 0):
        if isinstance(keys, dict):
            if probs is not None:
                raise RecaptionError("give the caption weights in the mapping or as probs, not both")
            keys, probs = list(keys), list(keys.values())
        elif isinstance(keys, str):
            keys = [k.strip() for k in keys.split(";") if k.strip()]
        self.keys = tuple(keys)
        if not self.keys:
            raise RecaptionError("choose among at least one caption key (recaption_raw, recaption_synthetic, ...)")
        bad = [k for k in self.keys if not caption_keys.is_key(k)]
        if bad:
            raise RecaptionError(f"not a caption key: {', '.join(map(repr, bad))}; the keys are recaption_raw, "
                                 "recaption_synthetic, recaption_synthetic_CAPTIONER, recaption_candidate_I, "
                                 "recaption_group_GROUP and recaption_group_GROUP_candidate_I")
        if len(set(self.keys)) < len(self.keys):
            raise RecaptionError(f"a caption key is named twice: {';'.join(self.keys)}")
        probs = [] if probs is None else [float(p) for p in probs]
        if len(probs) > len(self.keys):
            raise RecaptionError(f"{len(probs)} caption weights for {len(self.keys)} keys")
        if any(not math.isfinite(p) or p < 0 for p in probs):
            raise RecaptionError(f"caption weights must be finite and >= 0, got {probs}")
        self.weights = tuple(probs + [0.0] * (len(self.keys) - len(probs)))  # unspecified: fallback only
        self.seed = int(seed)

    @property
    def level(self) -> str:
        """The least `--caption-keys` level that writes every key chosen among."""
        return max((caption_keys.level_of(k) for k in self.keys), key=caption_keys.LEVELS.index)

    def draw(self, shard: str, key: str, epoch: int) -> float:
        """A number in [0, 1) fixed by the seed, the shard, the sample's key and the epoch."""
        h = hashlib.blake2b(f"{self.seed}\0{shard}\0{key}\0{epoch}".encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(h, "big") / 2.0**64

    def pick(self, present: list[bool], shard: str, key: str, epoch: int) -> int | None:
        """The index (in `keys`) of the caption the sample takes; None where it has none of them."""
        live = [i for i, ok in enumerate(present) if ok and self.weights[i] > 0]
        if live:
            total = sum(self.weights[i] for i in live)
            at = self.draw(shard, key, epoch) * total
            for i in live:
                at -= self.weights[i]
                if at < 0:
                    return i
            return live[-1]  # rounding at the very top
        return next((i for i, ok in enumerate(present) if ok), None)

    def __repr__(self) -> str:
        return f"CaptionChoice({dict(zip(self.keys, self.weights))!r}, seed={self.seed})"
