"""The namespace's cluster-wide tables: the node registry and its zones, API
tokens, and the chunk queries of repair, the mover, the orphan sweep and the
health view (which chunks have shards on which nodes).

`ClusterTables` is a base of `prismfs.meta.namespace.Namespace`: the same
SQLite database and the same deterministic apply (its command handlers are
dispatched by the namespace, inside the namespace's transaction); it is
kept apart because none of it touches the directory tree.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence

import msgspec

from prismfs.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    NotFound,
    NotPermitted,
)
from prismfs.meta.commands import (
    ChunkRecord,
    CreateToken,
    MoveShards,
    NodeInfo,
    RegisterNode,
    RevokeToken,
    SetNodeState,
    SetNodeZone,
    TokenInfo,
)
from prismfs.wire.codec import decode_message, encode_message

CHUNK_PAGE = 500  # chunk records per page of `chunks_on` and `coded_chunks`


class ClusterTables:
    db: sqlite3.Connection

    def referenced(self, ids: tuple[bytes, ...]) -> list[bytes]:
        """Which of these chunk ids a file or the GC queue still refers to."""
        out = []
        for chunk_id in ids[:10_000]:
            if self.db.execute(
                "SELECT 1 FROM chunks WHERE chunk_id = ? UNION ALL"
                " SELECT 1 FROM gc WHERE chunk_id = ? LIMIT 1",
                (chunk_id, chunk_id),
            ).fetchone():
                out.append(chunk_id)
        return out

    def live_chunk_ids(self, ids: Sequence[bytes]) -> set[bytes]:
        """Which of these chunk ids a file's chunk record refers to now."""
        out: set[bytes] = set()
        for at in range(0, len(ids), 500):
            part = list(ids[at : at + 500])
            marks = ",".join("?" * len(part))
            rows = self.db.execute(f"SELECT chunk_id FROM chunks WHERE chunk_id IN ({marks})", part)
            out.update(bytes(r[0]) for r in rows)
        return out

    def referenced_shards(self, node: str, shard_ids: tuple[str, ...]) -> list[str]:
        """Which of these shards a chunk record places on ``node``, or the GC queue
        holds (its deletion is still to come)."""
        out = []
        for sid in shard_ids[:10_000]:
            chunk_hex, _, index = sid.partition(".")
            try:
                chunk_id, i = bytes.fromhex(chunk_hex), int(index)
            except ValueError:
                continue
            if self.db.execute("SELECT 1 FROM gc WHERE chunk_id = ?", (chunk_id,)).fetchone():
                out.append(sid)
                continue
            for (blob,) in self.db.execute(
                "SELECT record FROM chunks WHERE chunk_id = ?", (chunk_id,)
            ).fetchall():
                nodes = decode_record(blob).nodes
                if i < len(nodes) and nodes[i] == node:
                    out.append(sid)
                    break
        return out

    def coded_chunks(self, after: bytes = b"", limit: int = CHUNK_PAGE) -> list[ChunkRecord]:
        """Chunk records with shards (not inline), ordered by id, after ``after``."""
        return self._chunks_where(lambda rec: not rec.is_inline, after, limit)

    def _chunks_where(
        self, keep: Callable[[ChunkRecord], bool], after: bytes, limit: int
    ) -> list[ChunkRecord]:
        out: list[ChunkRecord] = []
        while len(out) < limit:
            rows = self.db.execute(
                "SELECT chunk_id, record FROM chunks WHERE chunk_id > ? ORDER BY chunk_id"
                " LIMIT 1000",
                (after,),
            ).fetchall()
            if not rows:
                break
            for chunk_id, blob in rows:
                after = bytes(chunk_id)
                rec = decode_record(blob)
                if keep(rec):
                    out.append(rec)
                    if len(out) >= limit:
                        break
        return out

    def chunk_health(self, bad: set[str]) -> tuple[int, int, int, int]:
        """(chunks with shards, healthy, degraded, unavailable), counting shards on
        ``bad`` nodes or never stored as lost; a chunk written with a reduced
        layout (fewer nodes were up) is degraded until it is re-encoded."""
        total = healthy = degraded = unavailable = 0
        for (blob,) in self.db.execute("SELECT record FROM chunks"):
            rec = decode_record(blob)
            if rec.is_inline:
                continue
            total += 1
            live = sum(1 for n in rec.nodes if n and n not in bad)
            if live >= rec.m and not rec.reduced:
                healthy += 1
            elif live >= rec.k:
                degraded += 1
            else:
                unavailable += 1
        return total, healthy, degraded, unavailable

    def shards_per_node(self) -> dict[str, int]:
        """How many shards the chunk records place on each node."""
        counts: dict[str, int] = {}
        for (blob,) in self.db.execute("SELECT record FROM chunks"):
            for n in decode_record(blob).nodes:
                if n:
                    counts[n] = counts.get(n, 0) + 1
        return counts

    def chunks_on(
        self, bad: set[str], after: bytes = b"", limit: int = CHUNK_PAGE
    ) -> list[ChunkRecord]:
        """Chunk records (ordered by id, after ``after``) with a shard on a node of
        ``bad`` or never stored (node ""): what repair works on."""
        return self._chunks_where(
            lambda rec: any(not n or n in bad for n in rec.nodes), after, limit
        )

    def iter_chunks_on(self, bad: set[str]) -> Iterator[ChunkRecord]:
        """Every record `chunks_on` would give, page by page (no cursor is held
        open between pages)."""
        after = b""
        while True:
            page = self.chunks_on(bad, after)
            yield from page
            if len(page) < CHUNK_PAGE:
                return
            after = page[-1].id

    def nodes(self) -> list[NodeInfo]:
        rows = self.db.execute(
            "SELECT n.node, n.address, n.zone, n.capacity, n.state, n.registered_ns,"
            " coalesce(u.bytes, 0) FROM nodes n LEFT JOIN node_usage u ON u.node = n.node"
            " ORDER BY n.node"
        ).fetchall()
        return [NodeInfo(*row) for row in rows]

    def _register_node(self, c: RegisterNode) -> None:
        if not c.node or len(c.node) > 64 or not c.address:
            raise InvalidArgument("a node needs an id (1 to 64 characters) and an address")
        row = self.db.execute("SELECT state FROM nodes WHERE node = ?", (c.node,)).fetchone()
        if row is not None and row[0] == "removed":
            raise NotPermitted(f"node {c.node} was removed from the cluster")
        self.db.execute(
            "INSERT INTO nodes VALUES (?, ?, ?, ?, 'up', ?) ON CONFLICT (node) DO UPDATE SET"
            " address = excluded.address, capacity = excluded.capacity,"
            " zone = CASE WHEN excluded.zone = '' THEN zone ELSE excluded.zone END",
            (c.node, c.address, c.zone, c.capacity, c.now_ns),
        )

    def _move_shards(self, c: MoveShards) -> None:
        rows = self.db.execute(
            "SELECT ino, idx, record FROM chunks WHERE chunk_id = ?", (c.chunk_id,)
        ).fetchall()
        if not rows:
            raise NotFound(f"no file holds chunk {c.chunk_id.hex()} any more")
        for ino, idx, blob in rows:
            rec = decode_record(blob)
            nodes = list(rec.nodes)
            for index, old, new in c.moves:
                if index >= len(nodes) or nodes[index] != old or not new or new in nodes:
                    raise NotFound(f"shard {index} of chunk {c.chunk_id.hex()} moved meanwhile")
                nodes[index] = new
                for node, delta in ((old, -rec.shard_size), (new, rec.shard_size)):
                    if node:
                        self.db.execute(
                            "INSERT INTO node_usage VALUES (?, max(0, ?)) ON CONFLICT (node)"
                            " DO UPDATE SET bytes = max(0, bytes + ?)",
                            (node, delta, delta),
                        )
            moved = msgspec.structs.replace(rec, nodes=tuple(nodes))
            self.db.execute(
                "UPDATE chunks SET record = ? WHERE ino = ? AND idx = ?",
                (encode_message(moved), ino, idx),
            )
        self.db.execute("DELETE FROM node_usage WHERE bytes = 0")

    def _set_node_state(self, c: SetNodeState) -> None:
        row = self.db.execute("SELECT state FROM nodes WHERE node = ?", (c.node,)).fetchone()
        if row is None:
            raise NotFound(f"no node {c.node} in the registry")
        if c.expect and row[0] != c.expect:
            raise Conflict(f"node {c.node} is {row[0]}, not {c.expect}")
        if row[0] == "removed" and c.state != "removed":
            raise NotPermitted(f"node {c.node} was removed from the cluster")
        self.db.execute("UPDATE nodes SET state = ? WHERE node = ?", (c.state, c.node))

    def _create_token(self, c: CreateToken) -> None:
        if not (1 <= len(c.token_id) <= 64 and c.token_id.isalnum()) or len(c.digest) != 32:
            raise InvalidArgument("a token needs an alphanumeric id and a 32-byte digest")
        if len(c.name) > 200:
            raise InvalidArgument("a token's name has at most 200 characters")
        try:
            self.db.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, ?)",
                (c.token_id, c.digest, c.scope, c.name, c.now_ns),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"token {c.token_id} exists") from None

    def _revoke_token(self, c: RevokeToken) -> None:
        cursor = self.db.execute("DELETE FROM tokens WHERE token_id = ?", (c.token_id,))
        if cursor.rowcount == 0:
            raise NotFound(f"no token {c.token_id}")

    def tokens(self) -> list[TokenInfo]:
        rows = self.db.execute(
            "SELECT token_id, scope, name, created_ns FROM tokens ORDER BY created_ns, token_id"
        ).fetchall()
        return [TokenInfo(*row) for row in rows]

    def token(self, token_id: str) -> TokenInfo:
        row = self.db.execute(
            "SELECT token_id, scope, name, created_ns, digest FROM tokens WHERE token_id = ?",
            (token_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no token {token_id}")
        return TokenInfo(*row)

    def _set_node_zone(self, c: SetNodeZone) -> None:
        if len(c.zone) > 64:
            raise InvalidArgument("a zone name has at most 64 characters")
        cursor = self.db.execute("UPDATE nodes SET zone = ? WHERE node = ?", (c.zone, c.node))
        if cursor.rowcount == 0:
            raise NotFound(f"no node {c.node} in the registry")


def decode_record(blob: bytes) -> ChunkRecord:
    """A chunk record as the tables store it."""
    rec = decode_message(bytes(blob))
    assert isinstance(rec, ChunkRecord)
    return rec
