"""The namespace's cluster-wide tables: the node registry and its zones, API
tokens, and the chunk queries of repair, the mover, the orphan sweep and the
health view (which chunks have shards on which nodes).

`ClusterTables` is a base of `prismfs.meta.namespace.Namespace`: the same
SQLite database and the same deterministic apply (its command handlers are
dispatched by the namespace, inside the namespace's transaction); it is
kept apart because none of it touches the directory tree.
"""

from __future__ import annotations

import itertools
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
    VOTING,
    ChunkRecord,
    CreateCredential,
    CreateToken,
    CredentialInfo,
    MoveShards,
    NodeInfo,
    RegisterNode,
    RevokeCredential,
    RevokeToken,
    SetNodeState,
    SetNodeVoting,
    SetNodeZone,
    TokenInfo,
)
from prismfs.wire.auth import MAX_CREDENTIAL_ID, check_credential
from prismfs.wire.codec import decode_message, encode_message

CHUNK_PAGE = 500  # chunk records per page of `iter_chunks_on` and `coded_chunks`
SHARDS_TABLE = """
CREATE TABLE IF NOT EXISTS shards (
    node TEXT NOT NULL,
    chunk_id BLOB NOT NULL,
    ino INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (node, chunk_id, ino, idx)
) WITHOUT ROWID;
"""
"""Which chunk rows (file ``ino``, chunk ``idx``) place a shard on each node
("" for a shard a degraded write never stored), kept in apply with the
``chunks`` table: repair, drains and the health view read the rows of the
nodes they ask about instead of decoding every record."""


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
        layout (fewer nodes were up) is degraded until it is re-encoded. Reads
        only the chunks with a shard on those nodes and the reduced ones."""
        (total,) = self.db.execute("SELECT value FROM state WHERE key = 'coded_chunks'").fetchone()
        seen: set[tuple[int, int]] = set()
        degraded = unavailable = 0
        reduced = (
            (int(ino), int(idx), decode_record(blob))
            for ino, idx, blob in self.db.execute(
                "SELECT ino, idx, record FROM chunks WHERE reduced = 1"
            )
        )
        for ino, idx, rec in itertools.chain(self._rows_on(sorted(bad | {""})), reduced):
            if (ino, idx) in seen:
                continue
            seen.add((ino, idx))
            live = sum(1 for n in rec.nodes if n and n not in bad)
            if live >= rec.m and not rec.reduced:
                continue  # healthy
            if live >= rec.k:
                degraded += 1
            else:
                unavailable += 1
        return int(total), int(total) - degraded - unavailable, degraded, unavailable

    def shards_per_node(self) -> dict[str, int]:
        """How many shards the chunk records place on each node."""
        rows = self.db.execute(
            "SELECT node, count(*) FROM shards WHERE node != '' GROUP BY node ORDER BY node"
        )
        return {str(node): int(n) for node, n in rows}

    def iter_chunks_on(self, bad: set[str]) -> Iterator[ChunkRecord]:
        """Every chunk record with a shard on a node of ``bad`` or never stored
        (node ""): what repair works on. Node by node, each by chunk id, each
        record once; page by page (no cursor is held open between pages)."""
        yield from (rec for _, _, rec in self._rows_on(sorted(set(bad) | {""})))

    def _rows_on(self, order: Sequence[str]) -> Iterator[tuple[int, int, ChunkRecord]]:
        """(ino, idx, record) of the chunk rows with a shard on the nodes of
        ``order`` (sorted), each row once: under the first of its nodes."""
        for pos, node in enumerate(order):
            earlier = set(order[:pos])
            after: tuple[bytes, int, int] = (b"", -1, -1)
            while True:
                rows = self.db.execute(
                    "SELECT s.chunk_id, s.ino, s.idx, c.record FROM shards s"
                    " JOIN chunks c ON c.ino = s.ino AND c.idx = s.idx WHERE s.node = ?"
                    " AND (s.chunk_id, s.ino, s.idx) > (?, ?, ?)"
                    " ORDER BY s.chunk_id, s.ino, s.idx LIMIT ?",
                    (node, *after, CHUNK_PAGE),
                ).fetchall()
                for _, ino, idx, blob in rows:
                    rec = decode_record(blob)
                    if not any(n in earlier for n in rec.nodes):
                        yield int(ino), int(idx), rec
                if len(rows) < CHUNK_PAGE:
                    break
                after = (bytes(rows[-1][0]), int(rows[-1][1]), int(rows[-1][2]))

    def _index_shards(
        self, ino: int, idx: int, old: ChunkRecord | None, new: ChunkRecord | None
    ) -> None:
        """Keep `shards` and the count of chunks with shards in step with a change
        of chunk row (ino, idx) from ``old`` to ``new`` (None: no row). A move
        (same chunk, shards on other nodes) touches only the nodes it changes."""
        if old is not None and new is not None and old.id == new.id and not old.is_inline:
            for node in set(old.nodes) - set(new.nodes):
                self.db.execute(
                    "DELETE FROM shards WHERE node = ? AND chunk_id = ? AND ino = ? AND idx = ?",
                    (node, old.id, ino, idx),
                )
            for node in set(new.nodes) - set(old.nodes):
                self.db.execute(
                    "INSERT OR IGNORE INTO shards VALUES (?, ?, ?, ?)", (node, new.id, ino, idx)
                )
            return
        if old is not None and not old.is_inline:
            for node in set(old.nodes):
                self.db.execute(
                    "DELETE FROM shards WHERE node = ? AND chunk_id = ? AND ino = ? AND idx = ?",
                    (node, old.id, ino, idx),
                )
            self.db.execute("UPDATE state SET value = value - 1 WHERE key = 'coded_chunks'")
        if new is not None and not new.is_inline:
            for node in set(new.nodes):
                self.db.execute(
                    "INSERT OR IGNORE INTO shards VALUES (?, ?, ?, ?)", (node, new.id, ino, idx)
                )
            self.db.execute("UPDATE state SET value = value + 1 WHERE key = 'coded_chunks'")

    def _index_all_shards(self) -> None:
        """Build `shards` and the count from the chunk rows (a database of a
        schema before 6), in the caller's transaction."""
        self.db.execute(SHARDS_TABLE)  # (a restored snapshot image may not have it)
        self.db.execute("DELETE FROM shards")
        self.db.execute("INSERT OR REPLACE INTO state VALUES ('coded_chunks', 0)")
        for ino, idx, blob in self.db.execute("SELECT ino, idx, record FROM chunks").fetchall():
            self._index_shards(int(ino), int(idx), None, decode_record(blob))

    def nodes(self) -> list[NodeInfo]:
        rows = self.db.execute(
            "SELECT n.node, n.address, n.zone, n.capacity, n.state, n.registered_ns,"
            " coalesce(u.bytes, 0), n.state_ns, n.voting"
            " FROM nodes n LEFT JOIN node_usage u ON u.node = n.node"
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
            "INSERT INTO nodes (node, address, zone, capacity, state, registered_ns, state_ns)"
            " VALUES (?, ?, ?, ?, 'up', ?, ?) ON CONFLICT (node) DO UPDATE SET"
            " address = excluded.address, capacity = excluded.capacity,"
            " zone = CASE WHEN excluded.zone = '' THEN zone ELSE excluded.zone END",
            (c.node, c.address, c.zone, c.capacity, c.now_ns, c.now_ns),
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
            self._index_shards(ino, idx, rec, moved)
        self.db.execute("DELETE FROM node_usage WHERE bytes = 0")

    def _set_node_state(self, c: SetNodeState) -> None:
        row = self.db.execute("SELECT state FROM nodes WHERE node = ?", (c.node,)).fetchone()
        if row is None:
            raise NotFound(f"no node {c.node} in the registry")
        if c.expect and row[0] != c.expect:
            raise Conflict(f"node {c.node} is {row[0]}, not {c.expect}")
        if row[0] == "removed" and c.state != "removed":
            raise NotPermitted(f"node {c.node} was removed from the cluster")
        if row[0] != c.state:
            self.db.execute(
                "UPDATE nodes SET state = ?, state_ns = ? WHERE node = ?",
                (c.state, c.now_ns, c.node),
            )

    def _create_token(self, c: CreateToken) -> None:
        if not (1 <= len(c.token_id) <= 64 and c.token_id.isalnum()) or len(c.digest) != 32:
            raise InvalidArgument("a token needs an alphanumeric id and a 32-byte digest")
        if len(c.name) > 200:
            raise InvalidArgument("a token's name has at most 200 characters")
        if c.prefix and (
            not c.prefix.startswith("/") or c.prefix.endswith("/") or "//" in c.prefix
        ):
            raise InvalidArgument("a token's prefix is an absolute path like /a/b (or none)")
        if len(c.prefix.encode()) > 4096:
            raise InvalidArgument("a token's prefix has at most 4096 bytes")
        try:
            self.db.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (c.token_id, c.digest, c.scope, c.name, c.now_ns, c.uid, c.gid, c.prefix),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"token {c.token_id} exists") from None

    def _revoke_token(self, c: RevokeToken) -> None:
        cursor = self.db.execute("DELETE FROM tokens WHERE token_id = ?", (c.token_id,))
        if cursor.rowcount == 0:
            raise NotFound(f"no token {c.token_id}")

    def tokens(self) -> list[TokenInfo]:
        rows = self.db.execute(
            "SELECT token_id, scope, name, created_ns, x'', uid, gid, prefix FROM tokens"
            " ORDER BY created_ns, token_id"
        ).fetchall()
        return [TokenInfo(*row) for row in rows]

    def token(self, token_id: str) -> TokenInfo:
        row = self.db.execute(
            "SELECT token_id, scope, name, created_ns, digest, uid, gid, prefix FROM tokens"
            " WHERE token_id = ?",
            (token_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no token {token_id}")
        return TokenInfo(*row)

    def _create_credential(self, c: CreateCredential) -> None:
        try:
            check_credential(c.role, c.credential)
        except InvalidArgument as exc:
            raise InvalidArgument(exc.message) from None
        if len(c.name) > 200:
            raise InvalidArgument("a credential's name has at most 200 characters")
        try:
            self.db.execute(
                "INSERT INTO credentials VALUES (?, ?, ?, ?, 0)",
                (c.credential, c.role, c.name, c.now_ns),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"credential {c.credential} exists") from None

    def _revoke_credential(self, c: RevokeCredential) -> None:
        if not c.credential or len(c.credential) > MAX_CREDENTIAL_ID:
            raise InvalidArgument("no such credential id")
        row = self.db.execute(
            "SELECT revoked_ns FROM credentials WHERE credential = ?", (c.credential,)
        ).fetchone()
        if row is not None and row[0]:
            raise NotFound(f"credential {c.credential} is already revoked")
        self.db.execute(
            "INSERT INTO credentials VALUES (?, '', '', 0, ?) ON CONFLICT (credential)"
            " DO UPDATE SET revoked_ns = excluded.revoked_ns",
            (c.credential, c.now_ns),
        )

    def credentials(self) -> list[CredentialInfo]:
        rows = self.db.execute(
            "SELECT credential, role, name, created_ns, revoked_ns FROM credentials"
            " ORDER BY created_ns, credential"
        ).fetchall()
        return [CredentialInfo(*row) for row in rows]

    def revoked_credentials(self) -> frozenset[str]:
        rows = self.db.execute("SELECT credential FROM credentials WHERE revoked_ns != 0")
        return frozenset(row[0] for row in rows)

    def _set_node_voting(self, c: SetNodeVoting) -> None:
        if c.voting not in VOTING:
            raise InvalidArgument(f"voting is one of {', '.join(VOTING)}, not {c.voting!r}")
        cursor = self.db.execute("UPDATE nodes SET voting = ? WHERE node = ?", (c.voting, c.node))
        if cursor.rowcount == 0:
            raise NotFound(f"no node {c.node} in the registry")

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
