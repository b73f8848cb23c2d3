"""Caption mixing (docs/formats.md#mixing-strategies): columnar decisions over annotation files, then a lossless shard rewrite."""
