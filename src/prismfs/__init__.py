"""PrismFS: a distributed, erasure-coded, Raft-replicated file system.

The package is layered as `../shared/DESIGN.md` lays out: `wire` (framing,
typed messages, RPC, auth) at the bottom, `node` (the storage-node daemon) and
`cli` (the `prismfs` and `mount.prismfs` commands) on top.
"""

__version__ = "0.1.0"
