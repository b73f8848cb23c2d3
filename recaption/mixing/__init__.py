"""Caption mixing (SPEC 4/5): pure decisions over annotation rows, then a lossless shard rewrite."""
