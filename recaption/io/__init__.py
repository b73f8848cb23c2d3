"""Reading shard sets, writing shards and annotation files (docs/formats.md)."""
