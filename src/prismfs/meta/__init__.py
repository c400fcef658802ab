"""The namespace state machine: POSIX metadata in SQLite, replicated by Raft.

`commands` holds the typed commands and results, `schema` the SQLite tables,
`namespace` the deterministic apply logic with POSIX rules and errnos.
"""
