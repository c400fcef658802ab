"""The namespace over the wire: typed calls, exactly-once retries, a session.

Theory of operation. Every namespace change travels as a `Propose` with a
(client id, sequence) pair. The state machine keeps the last sequence and
result per client id, so a retry after a timeout, a dropped connection or a
leader change gets the first answer back and never applies twice. One
client id may have only one command in flight (an older sequence arriving
after a newer one would be taken for a stale retry), so a `MetaClient`
holds a set of *lanes*, ``<session>/<n>``, each with its own sequence; a
call takes a free lane for as long as it runs. Up to ``lanes`` calls run
concurrently.

Reads go as `Query` to the leader once it is known (its ReadIndex is one
heartbeat round; a follower's is two hops more), else to any node: the node
runs a ReadIndex round with the leader and answers from its replica once it
has applied that far, so reads are linearizable wherever they are served.

Transient errors (no leader yet, node down, overload, deadline of one
attempt) are retried at the next address with a short backoff until the
call's deadline; POSIX errors come back as their `PrismError` classes
(`NotFound`, `AlreadyExists`, ...) with an errno.

The session (`open_meta_client`) holds a lease renewed in the background;
files opened through it stay readable after their last name is removed
until released, or until the lease runs out if this client dies.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import trio

from prismfs.clock import wall_ns
from prismfs.errors import (
    DeadlineExceeded,
    DelegationLost,
    InternalError,
    InvalidArgument,
    PrismError,
    SessionExpired,
    UnknownMethod,
    registered_errors,
)
from prismfs.meta.commands import (
    Attr,
    Batch,
    BatchResults,
    ChunkMap,
    ChunkRecord,
    ChunkRefs,
    CloseSession,
    CommitChunks,
    CreateCredential,
    CreateToken,
    CredentialInfo,
    CredentialList,
    DirEntry,
    DirPage,
    FsStats,
    GcDone,
    GcEntries,
    GcPending,
    GetAttr,
    GetChunks,
    GetDigest,
    GetLayout,
    GetToken,
    GetXattr,
    Link,
    ListCredentials,
    ListNodes,
    ListTokens,
    ListXattr,
    Lookup,
    MetaCommand,
    MetaFailed,
    MetaOk,
    MetaQuery,
    MetaValue,
    Mkdir,
    Mknod,
    NodeInfo,
    NodeList,
    Open,
    OpenSession,
    ReadDir,
    ReadLink,
    Release,
    RemoveXattr,
    Rename,
    Reserved,
    ReserveInodes,
    RevokeCredential,
    RevokeToken,
    Rmdir,
    SetAttr,
    SetXattr,
    StatFs,
    Symlink,
    TokenInfo,
    TokenList,
    Unlink,
)
from prismfs.node.consensus_messages import (
    LeaseGrant,
    LeasePoll,
    LeaseRecalls,
    Propose,
    Proposed,
    Query,
    QueryResult,
    RaftStatus,
    RaftStatusReply,
    RenewSession,
    SessionRenewed,
)
from prismfs.wire.client import RpcPool
from prismfs.wire.codec import Message, decode_message, encode_message

log = logging.getLogger("prismfs.meta.client")

T = TypeVar("T", bound=Message)


class LeaseHooks(Protocol):
    """What a mount holding directory leases is told of its own changes
    (`prismfs.fuse.leased`)."""

    def changing(
        self, ops: Sequence[MetaCommand], delegated: tuple[tuple[int, int, int], ...] = ()
    ) -> None: ...

    def changed(
        self,
        ops: Sequence[MetaCommand],
        results: Sequence[bytes] | None,
        grants: tuple[LeaseGrant, ...],
        sent_at: float,
        delegated: tuple[tuple[int, int, int], ...] = (),
    ) -> None:
        """``results`` per op, or None when the change failed or its fate is
        unknown. ``delegated``: the change was a flush under those
        delegations (the copies of those directories stay this mount's)."""


@dataclass
class _Lane:
    client: str
    seq: int = 0
    session: str = ""  # the session whose lanes it is one of


class MetaClient:
    def __init__(
        self,
        pool: RpcPool,
        addresses: Sequence[str],
        *,
        session: str | None = None,
        lanes: int = 64,
        timeout: float = 30.0,
        attempt_timeout: float = 10.0,
    ) -> None:
        if not addresses:
            raise ValueError("a MetaClient needs at least one node address")
        self.pool = pool
        self.addresses = list(addresses)
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self._preferred = 0
        self._leader = ""  # the leader's address, once learned (writes go straight there)
        self.reads_at_leader = True  # a leader's ReadIndex is one round, a follower's two
        self.lease_s = 0.0  # the session's lease, once opened (0: no session)
        self.sessions_lost = 0
        self._unopened = False  # a new session could not be started yet
        self._renew_in_log = False  # the leader predates `RenewSession`
        # Told the directories each applied command changed (`MetaOk.parents`):
        # a mount keeps them to answer the kernel's next getattr of them.
        self.on_parents: Callable[[tuple[Attr, ...]], None] | None = None
        # A mount taking directory leases: reads name it, changes tell it.
        self.lease_hooks: LeaseHooks | None = None
        self._lanes = lanes
        self._new_session(session or f"c-{secrets.token_hex(8)}")

    def _new_session(self, session: str) -> None:
        """Use ``session`` from now on, with lanes of its own."""
        self.session = session
        self._next_lane = self._lanes
        send, self._free = trio.open_memory_channel[_Lane](self._lanes)
        for n in range(self._lanes):
            send.send_nowait(_Lane(f"{session}/{n}", session=session))
        self._return = send

    # --- the two primitives -----------------------------------------------------------

    async def propose(self, command: MetaCommand) -> Attr | None:
        """Apply one namespace command exactly once; its attributes or a PrismError."""
        return self._ok(await self._propose(command)).attr

    def _ok(self, raw: bytes) -> MetaOk:
        ok = _ok(raw)
        if ok.parents and self.on_parents is not None:
            self.on_parents(ok.parents)
        return ok

    async def _propose(
        self,
        command: MetaCommand,
        ops: Sequence[MetaCommand] | None = None,
        delegated: tuple[tuple[int, int, int], ...] = (),
    ) -> bytes:
        lane = await self._free.receive()
        settled = False
        hooks = self.lease_hooks
        told = ops if ops is not None else (command,)
        if hooks is not None:
            hooks.changing(told, delegated)
        sent_at = trio.current_time()
        results: Sequence[bytes] | None = None
        reply: Proposed | None = None
        try:
            lane.seq += 1
            request = Propose(
                lane.client,
                lane.seq,
                encode_message(command),
                self.session if hooks is not None else "",
                delegated,
            )
            reply = await self._call(request, Proposed, to_leader=True)
            settled = True
            if hooks is not None:
                results = _results(reply.result, len(told)) if ops is not None else [reply.result]
        except PrismError as exc:
            # A transient error that outlived the deadline leaves the command's
            # fate open: it may sit in a log and apply later.
            settled = not exc.transient
            raise
        finally:
            if hooks is not None:
                hooks.changed(
                    told, results, reply.leases if reply is not None else (), sent_at, delegated
                )
            if lane.session != self.session:
                pass  # a lane of a session that is gone: never used again
            elif settled:
                self._return.send_nowait(lane)
            else:
                # Never reuse a lane whose last command may still be in flight:
                # this one retires, a fresh one takes its place.
                self._return.send_nowait(
                    _Lane(f"{self.session}/{self._next_lane}", session=self.session)
                )
                self._next_lane += 1
        try:
            decode_result(reply.result)
        except SessionExpired:
            if lane.session == self.session:
                await self._session_lost(f"a command was refused: {command!r:.80}")
        except PrismError:
            pass
        return reply.result

    async def batch(
        self,
        ops: Sequence[MetaCommand],
        *,
        parents: list[Attr] | None = None,
        delegated: tuple[tuple[int, int, int], ...] = (),
    ) -> list[Attr | PrismError | None]:
        """Apply ``ops`` in order in one log entry (one round trip, one fsync),
        exactly once as a whole; per op its attributes or its error (a failed
        op changed nothing, the others still applied). With ``parents``, the
        directories the ops changed go there instead of to `on_parents` (the
        caller notes them after its own use of the results). ``delegated``:
        the delegations ``(key, term, seq)`` the ops were acknowledged under
        here (a flush of write-back; `DelegationLost` if one ended)."""
        batch = Batch(now_ns(), tuple(encode_message(op) for op in ops))
        try:
            raw = decode_result(await self._propose(batch, ops, delegated))
        except DelegationLost as exc:
            if not exc.details.get("new_leader"):
                raise
            # The leader that granted the delegation is gone, and its
            # successor knows none: the changes go the usual way (recalling
            # other holders) rather than being lost with a leader that
            # failed. (A leader of this version does that itself, under the
            # flush's own request id; one of an earlier version refuses.)
            log.warning("a delegation ended with its leader; %d changes sent again", len(ops))
            raw = decode_result(await self._propose(Batch(now_ns(), batch.ops), ops))
        if not isinstance(raw, BatchResults) or len(raw.results) != len(ops):
            raise TypeError(f"expected {len(ops)} batch results, got {raw!r:.200}")
        out: list[Attr | PrismError | None] = []
        for result in raw.results:
            try:
                if parents is None:
                    out.append(self._ok(result).attr)
                else:
                    ok = _ok(result)
                    parents.extend(ok.parents)
                    out.append(ok.attr)
            except PrismError as exc:
                out.append(exc)
        return out

    async def reserve_inodes(self, count: int) -> range:
        """Inode numbers for this client's own creates (`Mknod` with ``ino``)."""
        raw = decode_result(await self._propose(ReserveInodes(now_ns(), count)))
        if not isinstance(raw, Reserved):
            raise TypeError(f"expected Reserved, got {type(raw).__name__}")
        return range(raw.first, raw.first + raw.count)

    async def query_leased(
        self, q: MetaQuery, exclusive: bool = False
    ) -> tuple[bytes, LeaseGrant | None]:
        """A read naming this client as a lease holder: the raw result (a
        `MetaFailed` not raised) and the lease the leader granted with it
        (``exclusive``: a delegation, if the leader can)."""
        reply = await self._call(
            Query(encode_message(q), self.session, exclusive), QueryResult, to_leader=True
        )
        return reply.result, reply.lease

    async def poll_recalls(
        self, acks: Sequence[tuple[int, int, int]], wait_s: float, writeback: bool = False
    ) -> tuple[tuple[int, int, int], ...]:
        """Acknowledge recalls handled and wait up to ``wait_s`` for more (at
        the leader); ``writeback``: this mount takes delegations."""
        reply = await self._call(
            LeasePoll(self.session, tuple(acks), wait_s, writeback), LeaseRecalls, to_leader=True
        )
        return reply.recalls

    async def query(self, q: MetaQuery, expect: type[T]) -> T:
        # A mount that holds leases says who reads (its own delegations are
        # not recalled for it), without asking for a lease with the answer.
        holder = self.session if self.lease_hooks is not None else ""
        reply = await self._call(
            Query(encode_message(q), holder, lease=False),
            QueryResult,
            to_leader=self.reads_at_leader or bool(holder),
        )
        result = decode_result(reply.result)
        if not isinstance(result, expect):
            raise TypeError(f"expected {expect.__name__}, got {type(result).__name__}")
        return result

    async def _find_leader(self, timeout: float) -> str:
        """The leader's address from any node's Raft status ("" if none is known)."""
        for n in range(len(self.addresses)):
            address = self.addresses[(self._preferred + n) % len(self.addresses)]
            try:
                reply = (await self.pool.call(address, RaftStatus(), timeout=timeout)).message
            except PrismError:
                continue
            if isinstance(reply, RaftStatusReply) and reply.leader_address:
                return reply.leader_address
        return ""

    async def _call(self, request: Message, expect: type[T], *, to_leader: bool = False) -> T:
        """Send ``request`` until it is answered; writes go to the leader when it is
        known (any node would forward, at the cost of one more hop)."""
        deadline = trio.current_time() + self.timeout
        delay = 0.02
        while True:
            if to_leader and not self._leader:
                self._leader = await self._find_leader(min(2.0, self.attempt_timeout))
            address = (to_leader and self._leader) or self.addresses[
                self._preferred % len(self.addresses)
            ]
            attempt = min(self.attempt_timeout, max(0.05, deadline - trio.current_time()))
            try:
                reply = (await self.pool.call(address, request, timeout=attempt)).message
            except PrismError as exc:
                if not exc.transient:
                    raise
                if trio.current_time() + delay >= deadline:
                    raise DeadlineExceeded(
                        f"namespace call not done within {self.timeout:g}s: {exc.message}"
                    ) from None
                log.debug("retrying %s after %s at %s", type(request).__name__, exc, address)
                if to_leader and address == self._leader:
                    self._leader = ""  # look for the leader again
                self._preferred += 1  # try the next node; any node forwards to the leader
                await trio.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            if not isinstance(reply, expect):
                raise TypeError(f"expected {expect.__name__}, got {type(reply).__name__}")
            return reply

    # --- commands -------------------------------------------------------------------------

    async def mknod(
        self,
        parent: int,
        name: bytes,
        mode: int,
        uid: int = 0,
        gid: int = 0,
        rdev: int = 0,
        *,
        open_it: bool = False,
        chunk_size: int = 0,
    ) -> Attr:
        attr = await self.propose(
            Mknod(
                now_ns(),
                parent,
                name,
                mode,
                uid,
                gid,
                rdev,
                session=self.session if open_it else "",
                chunk_size=chunk_size,
            )
        )
        assert attr is not None
        return attr

    async def mkdir(self, parent: int, name: bytes, mode: int, uid: int = 0, gid: int = 0) -> Attr:
        attr = await self.propose(Mkdir(now_ns(), parent, name, mode, uid, gid))
        assert attr is not None
        return attr

    async def symlink(
        self, parent: int, name: bytes, target: bytes, uid: int = 0, gid: int = 0
    ) -> Attr:
        attr = await self.propose(Symlink(now_ns(), parent, name, target, uid, gid))
        assert attr is not None
        return attr

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        attr = await self.propose(Link(now_ns(), ino, new_parent, new_name))
        assert attr is not None
        return attr

    async def unlink(self, parent: int, name: bytes) -> None:
        await self.propose(Unlink(now_ns(), parent, name))

    async def rmdir(self, parent: int, name: bytes) -> None:
        await self.propose(Rmdir(now_ns(), parent, name))

    async def rename(
        self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int = 0
    ) -> None:
        await self.propose(Rename(now_ns(), parent, name, new_parent, new_name, flags))

    async def setattr(self, ino: int, **changes: int | None) -> Attr:
        attr = await self.propose(SetAttr(now_ns(), ino, **changes))
        assert attr is not None
        return attr

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        await self.propose(SetXattr(now_ns(), ino, name, value, flags))

    async def removexattr(self, ino: int, name: bytes) -> None:
        await self.propose(RemoveXattr(now_ns(), ino, name))

    async def open(self, ino: int) -> Attr:
        attr = await self.propose(Open(now_ns(), self.session, ino))
        assert attr is not None
        return attr

    async def release(self, ino: int) -> None:
        await self.propose(Release(now_ns(), self.session, ino))

    async def commit_chunks(
        self, ino: int, chunks: Sequence[tuple[int, ChunkRecord]], size: int
    ) -> Attr:
        attr = await self.propose(CommitChunks(now_ns(), ino, tuple(chunks), size))
        assert attr is not None
        return attr

    async def gc_done(self, seqs: Sequence[int]) -> None:
        await self.propose(GcDone(now_ns(), tuple(seqs)))

    # --- reads ------------------------------------------------------------------------------

    async def lookup(self, parent: int, name: bytes) -> Attr:
        return _attr(await self.query(Lookup(parent, name), MetaOk))

    async def getattr(self, ino: int) -> Attr:
        return _attr(await self.query(GetAttr(ino), MetaOk))

    async def readdir_page(self, ino: int, cookie: int = 0, limit: int = 1000) -> DirPage:
        return await self.query(ReadDir(ino, cookie, limit), DirPage)

    async def readdir(self, ino: int, page: int = 1000) -> AsyncIterator[DirEntry]:
        """Every entry, page by page (each page one linearizable read)."""
        cookie = 0
        while True:
            result = await self.readdir_page(ino, cookie, page)
            for entry in result.entries:
                yield entry
            if not result.more or not result.entries:
                return
            cookie = result.entries[-1].cookie

    async def readlink(self, ino: int) -> bytes:
        return (await self.query(ReadLink(ino), MetaValue)).value

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        return (await self.query(GetXattr(ino, name), MetaValue)).value

    async def listxattr(self, ino: int) -> tuple[bytes, ...]:
        return (await self.query(ListXattr(ino), MetaValue)).names

    async def chunk_map(self, ino: int, first: int = 0, count: int = 1024) -> ChunkMap:
        """Records of chunks ``first`` to ``first + count - 1``, or a first part of
        them (``more``: see `chunk_map_all`)."""
        return await self.query(GetChunks(ino, first, count), ChunkMap)

    async def chunk_map_all(self, ino: int, first: int = 0, count: int = 1 << 40) -> ChunkMap:
        """Every record of chunks ``first`` to ``first + count - 1``, in as many
        queries as their size needs (size and chunk size from the last one)."""
        end = first + count
        chunks: list[tuple[int, ChunkRecord]] = []
        while True:
            part = await self.chunk_map(ino, first, min(end - first, 100_000))
            chunks += part.chunks
            if not part.more or not part.chunks:
                return ChunkMap(part.chunk_size, part.size, tuple(chunks))
            first = part.chunks[-1][0] + 1
            if first >= end:
                return ChunkMap(part.chunk_size, part.size, tuple(chunks))

    async def statfs(self) -> FsStats:
        return await self.query(StatFs(), FsStats)

    async def gc_pending(self, limit: int = 1000) -> GcEntries:
        return await self.query(GcPending(limit), GcEntries)

    async def layout(self, ino: int) -> bytes:
        """The layout text for new files under directory ``ino`` (b"" = built-in default)."""
        return (await self.query(GetLayout(ino), MetaValue)).value

    async def chunk_refs(self, ids: Sequence[bytes]) -> set[bytes]:
        return set((await self.query(ChunkRefs(tuple(ids)), MetaValue)).names)

    async def nodes(self) -> tuple[NodeInfo, ...]:
        """The node registry: every storage node, its zone, capacity, state and usage."""
        return (await self.registry()).nodes

    async def registry(self) -> NodeList:
        """The node registry and the cluster settings placement needs."""
        return await self.query(ListNodes(), NodeList)

    async def create_token(
        self,
        token_id: str,
        digest: bytes,
        scope: str,
        name: str,
        uid: int = 0,
        gid: int = 0,
        prefix: str = "",
    ) -> None:
        await self.propose(
            CreateToken(now_ns(), token_id, digest, scope, name, uid, gid, prefix)  # type: ignore[arg-type]
        )

    async def revoke_token(self, token_id: str) -> None:
        await self.propose(RevokeToken(now_ns(), token_id))

    async def tokens(self) -> tuple[TokenInfo, ...]:
        return (await self.query(ListTokens(), TokenList)).tokens

    async def token(self, token_id: str) -> TokenInfo:
        """One token with its digest (`NotFound` if there is none)."""
        return await self.query(GetToken(token_id), TokenInfo)

    async def create_credential(self, credential: str, role: str, name: str) -> None:
        await self.propose(CreateCredential(now_ns(), credential, role, name))

    async def revoke_credential(self, credential: str) -> None:
        await self.propose(RevokeCredential(now_ns(), credential))

    async def credentials(self) -> tuple[CredentialInfo, ...]:
        return (await self.query(ListCredentials(), CredentialList)).credentials

    async def digest(self, address: str) -> str:
        """The state digest of the replica at ``address`` (for tests and fsck)."""
        reply = (await self.pool.call(address, Query(encode_message(GetDigest())))).message
        assert isinstance(reply, QueryResult)
        value = decode_result(reply.result)
        assert isinstance(value, MetaValue)
        return value.value.decode()

    # --- the session -------------------------------------------------------------------------

    async def open_session(self, lease_s: float) -> None:
        """Start this client's session (files it opens live as long as it does)."""
        await self.propose(OpenSession(now_ns(), self.session, int(lease_s * 1e9)))
        self.lease_s = lease_s

    async def renew_session(self) -> None:
        """Renew the lease. If the cluster ended the session meanwhile (no renewal
        reached the leader within a lease), start a new one: `SessionExpired`
        is raised after the switch, and `sessions_lost` counts it."""
        if not self.lease_s:
            raise InvalidArgument("no session to renew: open_session first")
        if self._unopened:
            await self.open_session(self.lease_s)
            self._unopened = False
            return
        session = self.session
        try:
            if self._renew_in_log:
                await self.propose(
                    OpenSession(now_ns(), session, int(self.lease_s * 1e9), renew=True)
                )
            else:
                await self._call(RenewSession(session), SessionRenewed, to_leader=True)
        except UnknownMethod:
            # A leader of an earlier version: renewals go through the log there.
            self._renew_in_log = True
            await self.renew_session()
        except SessionExpired:
            if session == self.session:
                await self._session_lost("its renewal was refused")
            raise

    async def _session_lost(self, how: str) -> None:
        """The cluster ended this client's session: say so loudly and go on with a
        new one. Files opened under the old one are stale (`OpenFile` fails its
        operations with ESTALE): their opens were released, and an unlinked one
        may already be gone."""
        old = self.session
        self.sessions_lost += 1
        self._new_session(f"c-{secrets.token_hex(8)}")
        log.error(
            "client session %s was ended by the cluster (%s): no renewal reached the leader "
            "within its %g s lease. Files opened before are stale and fail with ESTALE; "
            "continuing with session %s",
            old,
            how,
            self.lease_s,
            self.session,
        )
        if self.lease_s:
            try:
                await self.open_session(self.lease_s)
            except PrismError as exc:
                self._unopened = True  # the next renewal starts it
                log.warning("could not start session %s yet: %s", self.session, exc.message)

    async def close_session(self) -> None:
        with contextlib.suppress(SessionExpired):  # ended already: nothing to close
            await self.propose(CloseSession(now_ns(), self.session))


@asynccontextmanager
async def open_meta_client(
    pool: RpcPool,
    addresses: Sequence[str],
    *,
    lease_s: float = 60.0,
    **kwargs: object,
) -> AsyncIterator[MetaClient]:
    """A `MetaClient` with a session whose lease is renewed every third of it."""
    client = MetaClient(pool, addresses, **kwargs)  # type: ignore[arg-type]
    await client.open_session(lease_s)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_session, client)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()
            with trio.move_on_after(5, shield=True):
                try:
                    await client.close_session()
                except PrismError as exc:
                    log.warning("could not close session %s: %s", client.session, exc.message)


async def keep_session(client: MetaClient) -> None:
    """Renew the client's session every third of its lease, for as long as it runs."""
    while True:
        await trio.sleep(client.lease_s / 3)
        try:
            await client.renew_session()
        except SessionExpired:
            pass  # a new session was started and the loss logged
        except PrismError as exc:
            log.warning("could not renew session %s: %s", client.session, exc.message)


def now_ns() -> int:
    """The time stamp a command carries (the proposer's clock)."""
    return wall_ns()


def decode_result(raw: bytes) -> Message:
    """A proposal's or query's result; a refusal (`MetaFailed`) raised as its error."""
    result = decode_message(raw)
    if isinstance(result, MetaFailed):
        raise registered_errors().get(result.code, InternalError)(result.message)
    return result


def _results(raw: bytes, count: int) -> list[bytes] | None:
    """A batch's per-op results (None if it failed as a whole)."""
    try:
        result = decode_message(raw)
    except PrismError:
        return None
    if isinstance(result, BatchResults) and len(result.results) == count:
        return list(result.results)
    return None


def _ok(raw: bytes) -> MetaOk:
    result = decode_result(raw)
    if not isinstance(result, MetaOk):
        raise TypeError(f"expected MetaOk, got {type(result).__name__}")
    return result


def _attr(ok: MetaOk) -> Attr:
    assert ok.attr is not None
    return ok.attr
