"""Offline helpers: tiny random-weight models and sample shards, for tests, the demo and benchmarks."""
