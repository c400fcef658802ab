"""PrismFS: a distributed, erasure-coded, Raft-replicated file system.

The package is layered as `docs/architecture.md` describes: `wire` (framing,
typed messages, RPC, auth) at the bottom, then `raft`, `meta` and `data`, the
`client` library, `node` (the storage-node daemon), and the front ends `fuse`,
`gateway` and `cli` (the `prismfs` and `mount.prismfs` commands) on top.
"""

__version__ = "0.1.0"
