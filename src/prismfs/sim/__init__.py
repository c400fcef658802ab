"""Deterministic simulation of Raft clusters (`simulator`), with a key-value
workload (`kv`). Run a soak with ``python -m prismfs.sim --seeds 1000``."""
