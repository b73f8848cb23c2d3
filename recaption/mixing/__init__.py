"""Caption mixing (docs/formats.md#mixing-strategies): columnar decisions over annotation files, then a lossless shard rewrite."""

# the strategy names, here without numpy so that the CLI's --help can list them cheaply
STRATEGIES = ("raw", "synthetic", "threshold", "both", "sieve")
# `mix --caption-keys`: which captions get a top-level json key of their own (recaption.mixing.caption_keys)
CAPTION_KEYS = ("none", "best", "all")
