"""Reading shard sets, writing shards and annotation files (SPEC sections 1, 2 and 5)."""
