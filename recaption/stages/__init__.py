"""Per-shard stages that any engine runs unchanged: annotate (caption + score), import-captions, and
mix-write (one output shard from its plan)."""
