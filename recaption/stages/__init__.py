"""Per-shard stages that any engine runs unchanged: annotate (caption + score) and mix-write."""
