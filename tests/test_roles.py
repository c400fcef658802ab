"""Roles on a real 3-node cluster: what a client credential (and a read-only
one) may send, forged Raft senders, and credentials made, used and revoked
through the CLI and a mount."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

import prismfs.daemon  # noqa: F401  (registers every message a node knows)
from conftest import run_cli
from fuse_mount import Mount, errno_of, fuse_available
from message_strategies import random_instance
from prismfs.client.config import load_client_toml
from prismfs.errors import (
    PermissionDenied,
    PrismError,
    UnknownMethod,
)
from prismfs.meta.commands import (
    CLIENT_COMMANDS,
    READ_ONLY_COMMANDS,
    Batch,
    GetToken,
    ListCredentials,
    ListTokens,
    MetaCommand,
    Mknod,
    OpenSession,
    RemoveXattr,
    SetXattr,
)
from prismfs.node.consensus_messages import (
    Propose,
    Query,
    RaftBatch,
    RaftStatus,
    RaftStatusReply,
)
from prismfs.procs import process_alive
from prismfs.raft.messages import Heartbeat, Vote
from prismfs.wire.auth import CLIENT, READ_ONLY, ClusterCredentials, read_secret_file
from prismfs.wire.client import open_rpc_pool
from prismfs.wire.codec import Message, encode_message, registered_messages
from prismfs.wire.messages import Ping, Pong

NODE_ONLY = {
    "RaftBatch",
    "ChangeMembership",
    "TransferLeadership",
    "ClusterSeeds",
    "Fsck",
    "ScrubStart",
    "AddNode",
    "DrainNode",
    "CancelDrain",
    "RemoveNode",
    "SetVoting",
    "NodeHeartbeat",
    "DeleteShards",
    "ListShards",
    "StatShards",
    "VerifyShards",
    "CopyShard",
    "RebuildShards",
    "ReencodeShards",
    "StartBackup",
    "ReadBackup",
    "EndBackup",
}
"""Every request a node serves to nodes only (a new one must be added here)."""
FOR_CLIENTS = {
    "Ping",
    "Echo",
    "LeasePoll",
    "RenewSession",
    "Propose",
    "Query",
    "RaftStatus",
    "ClusterHealth",
    "FaultBudget",
    "Activity",
    "ScrubStatus",
    "PutShard",
    "GetShard",
    "StoreStats",
}
"""Every request a client credential may send (what it may propose and query
is narrowed inside `Propose` and `Query`)."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    m = Mount(tmp_path_factory.mktemp("roles"))
    try:
        m.up()
        yield m
    finally:
        m.cleanup()


def _creds(cluster: Mount) -> tuple[ClusterCredentials, ClusterCredentials, ClusterCredentials]:
    node = read_secret_file(Path(str(cluster.nodes()[0]["data_dir"])) / "cluster.secret")
    client = load_client_toml(cluster.dir / "mount.toml").credentials()
    return node, client, node.derive(READ_ONLY, "ro-test")


def _addresses(cluster: Mount) -> list[str]:
    return [str(n["rpc_address"]) for n in cluster.nodes()]


async def _observed(node: ClusterCredentials, addresses: list[str]) -> dict[str, Any]:
    """What a refused call must not change, as a node sees it."""
    from prismfs.meta.client import MetaClient

    async with open_rpc_pool(node, connect_timeout=2) as pool:
        meta = MetaClient(pool, addresses)
        status = (await pool.call(addresses[0], RaftStatus(), timeout=5)).message
        assert isinstance(status, RaftStatusReply)
        registry = await meta.registry()
        return {
            "term": status.term,
            "voters": sorted(status.voters),
            "nodes": sorted((n.node, n.state, n.zone, n.voting) for n in registry.nodes),
            "tokens": [t.token_id for t in await meta.tokens()],
            "credentials": [c.credential for c in await meta.credentials()],
            "root": sorted([e.name async for e in meta.readdir(1)]),
        }


def _samples(rng: random.Random) -> dict[str, Message]:
    out = {}
    for cls in registered_messages().values():
        try:
            out[cls.__name__] = random_instance(cls, rng)
        except (NotImplementedError, TypeError, ValueError, msgspec.ValidationError):
            continue
    return out


async def _outcome(pool: Any, address: str, message: Message) -> str:
    try:
        await pool.call(address, message, timeout=5)
    except PermissionDenied:
        return "refused"
    except UnknownMethod:
        return "unknown"
    except PrismError as exc:
        return f"error {exc.code}"
    return "answered"


def test_a_client_credential_is_refused_every_node_only_message(cluster: Mount) -> None:
    node, client, read_only = _creds(cluster)
    addresses = _addresses(cluster)

    async def main() -> None:
        before = await _observed(node, addresses)
        async with open_rpc_pool(client, connect_timeout=2) as pool:
            status = (await pool.call(addresses[0], RaftStatus(), timeout=5)).message
            assert isinstance(status, RaftStatusReply)
            leader = status.leader_address
            # Every message type there is, with random contents, to the leader
            # and to a follower: exactly the node-only ones are refused.
            for target in (leader, next(a for a in addresses if a != leader)):
                refused = set()
                served = set()
                for seed in range(3):
                    for name, message in _samples(random.Random(seed)).items():
                        if name not in NODE_ONLY and name not in FOR_CLIENTS:
                            continue  # not a request: answered UnknownMethod (checked below)
                        outcome = await _outcome(pool, target, message)
                        (refused if outcome == "refused" else served).add(name)
                assert refused == NODE_ONLY, refused ^ NODE_ONLY
                assert served == FOR_CLIENTS, served ^ FOR_CLIENTS
            # Any other message is no request: not served (a class this test
            # knows and the node does not is a malformed frame: the connection
            # is closed).
            others = _samples(random.Random(7))
            for name in sorted(set(others) - NODE_ONLY - FOR_CLIENTS):
                outcome = await _outcome(pool, leader, others[name])
                assert outcome in ("unknown", "error unavailable"), (name, outcome)

            # Every command but a client's own, proposed directly or inside a
            # batch, and the queries of tokens and credentials: refused.
            rng = random.Random(1)
            internal = [
                cls
                for cls in registered_messages().values()
                if issubclass(cls, MetaCommand) and cls not in CLIENT_COMMANDS
            ]
            assert {c.__name__ for c in internal} >= {
                "ExpireSessions",
                "MoveShards",
                "GcDone",
                "SetNodeState",
                "RegisterNode",
                "CreateToken",
                "CreateCredential",
                "RevokeCredential",
            }
            for i, cls in enumerate(internal):
                op = encode_message(random_instance(cls, rng))
                for wrapped in (op, encode_message(Batch(0, (op,)))):
                    with pytest.raises(PermissionDenied, match=cls.__name__):
                        await pool.call(leader, Propose(f"roles/{i}", 1, wrapped), timeout=5)
            # The cluster's own settings on the root, set as attributes, stay
            # the nodes' to change (a client's SetXattr is fine otherwise).
            for name in (b"prismfs.min_redundancy", b"prismfs.scrub_completed"):
                for cmd in (SetXattr(0, 1, name, b"0"), RemoveXattr(0, 1, name)):
                    with pytest.raises(PermissionDenied, match="cluster setting"):
                        await pool.call(leader, Propose("roles/x", 1, encode_message(cmd)),
                                        timeout=5)  # fmt: skip
            for query in (ListTokens(), GetToken("x"), ListCredentials()):
                with pytest.raises(PermissionDenied, match=type(query).__name__):
                    await pool.call(leader, Query(encode_message(query)), timeout=5)

            # A forged Raft sender: a vote for a far-future term in another
            # member's name, as a request and as a notification.
            members = sorted(set(status.voters) - {status.leader})
            vote = Vote(members[0], status.leader, status.term + 1000, 10**9, 10**9)
            with pytest.raises(PermissionDenied):
                await pool.call(leader, RaftBatch((vote,)), timeout=5)
            await pool.notify(leader, RaftBatch((vote,)))
        # A node's credential speaking for one member may not send in another's.
        async with open_rpc_pool(node, connect_timeout=2, node_id=members[0]) as pool:
            forged = Heartbeat(status.leader, members[0], status.term + 1000, 0)
            with pytest.raises(PermissionDenied, match="Raft message from"):
                await pool.call(members_address(status, members[0]), RaftBatch((forged,)))
            wrong_to = Vote(members[0], members[1], status.term + 1000, 10**9, 10**9)
            with pytest.raises(PermissionDenied, match="Raft message from"):
                await pool.call(leader, RaftBatch((wrong_to,)), timeout=5)
        # A read-only credential: no shard writes, no changes; its session is fine.
        async with open_rpc_pool(read_only, connect_timeout=2) as pool:
            with pytest.raises(PermissionDenied, match="PutShard"):
                await pool.call(leader, random_instance(_put_shard(), random.Random(2)), b"x")
            mknod = encode_message(Mknod(0, 1, b"ro-made", 0o100644, 0, 0))
            with pytest.raises(PermissionDenied, match="read-only credential may not propose"):
                await pool.call(leader, Propose("ro/1", 1, mknod), timeout=5)
            session = encode_message(OpenSession(0, "ro-session", 10**10))
            await pool.call(leader, Propose("ro-session/0", 1, session), timeout=5)
        assert OpenSession in READ_ONLY_COMMANDS
        await trio.sleep(1.0)  # a refused notification would have taken effect by now
        assert await _observed(node, addresses) == before

    trio.run(main)
    logs = "".join((Path(str(n["data_dir"])) / "node.log").read_text() for n in cluster.nodes())
    assert "refused DrainNode from" in logs
    assert "a client credential (default-client) may not send it" in logs
    assert "a client credential may not propose CreateToken" in logs
    assert "refused a Raft message from" in logs


def members_address(status: RaftStatusReply, member: str) -> str:
    return dict(status.addresses)[member]


def _put_shard() -> type[Message]:
    from prismfs.data.messages import PutShard

    return PutShard


def _cli(
    cluster: Mount, *args: str, config: str = "client.toml"
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        *args, env={**cluster.env, "PRISMFS_CONFIG": str(cluster.dir / config)}, timeout=60
    )


def test_credentials_are_made_listed_used_and_revoked(cluster: Mount, tmp_path: Path) -> None:
    assert fuse_available(), "/dev/fuse is missing: the FUSE tests cannot run"
    made = tmp_path / "host-a.secret"
    out = _cli(cluster, "credentials", "create", "--name", "host a", "--out", str(made), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["role"] == CLIENT and (made.stat().st_mode & 0o777) == 0o600
    ro_file = tmp_path / "ro.secret"
    out = _cli(cluster, "credentials", "create", "--read-only", "--out", str(ro_file))
    assert out.returncode == 0, out.stderr
    listed = json.loads(_cli(cluster, "credentials", "list", "--json").stdout)
    assert {c["id"]: c["role"] for c in listed} == {
        info["id"]: "client",
        read_secret_file(ro_file).credential: "read-only",
    }
    # Bad input: one line, nothing made.
    for args, message in (
        (("--out", str(made)), "already exists"),
        (("--id", "bad id!", "--out", str(tmp_path / "x")), "credential id"),
        (("--out", str(tmp_path / "missing" / "x")), "does not exist"),
    ):
        bad = _cli(cluster, "credentials", "create", *args)
        assert bad.returncode != 0 and message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
    # A client credential cannot make credentials nor drain a node.
    bad = _cli(cluster, "credentials", "create", "--out", str(tmp_path / "y"), config="mount.toml")
    assert bad.returncode != 0 and "needs the cluster secret" in bad.stderr
    node_id = str(cluster.nodes()[1]["node_id"])
    bad = _cli(cluster, "node", "drain", node_id, config="mount.toml")
    assert bad.returncode != 0 and "may not send DrainNode" in bad.stderr, bad.stderr
    assert len(json.loads(_cli(cluster, "credentials", "list", "--json").stdout)) == 2

    # A mount with the read-only credential reads and cannot write.
    addresses = ",".join(_addresses(cluster))
    rw = cluster.mount(point=tmp_path / "rw")
    (rw / "shared.txt").write_text("hello")
    ro = Mount(cluster.base, "ro")
    ro.dir = cluster.dir
    ro_point = tmp_path / "ro"
    try:
        _mount_source(ro, addresses, ro_point, ro_file)
        deadline = time.monotonic() + 10
        while not (ro_point / "shared.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (ro_point / "shared.txt").read_text() == "hello"
        assert errno_of((ro_point / "new.txt").write_text, "x") == errno.EROFS
        assert errno_of(os.mkdir, ro_point / "d") == errno.EROFS
    finally:
        ro.unmount(ro_point)

    # Revoked: new connections are refused with a clear error, open ones closed.
    a = Mount(cluster.base, "a")
    a.dir = cluster.dir
    a_point = tmp_path / "a"
    try:
        _mount_source(a, addresses, a_point, made)
        (a_point / "by-a.txt").write_text("a")
        out = _cli(cluster, "credentials", "revoke", info["id"])
        assert out.returncode == 0, out.stderr
        again = _cli(cluster, "credentials", "revoke", info["id"])
        assert again.returncode != 0 and "already revoked" in again.stderr
        listed = json.loads(_cli(cluster, "credentials", "list", "--json").stdout)
        assert next(c for c in listed if c["id"] == info["id"])["revoked"]
        toml = tmp_path / "a.toml"
        toml.write_text(f'cluster = {json.dumps(_addresses(cluster))}\nsecret_file = "{made}"\n')
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ls = run_cli("ls", "/", env={**cluster.env, "PRISMFS_CONFIG": str(toml)}, timeout=60)
            if ls.returncode != 0:
                break
            time.sleep(0.5)
        assert ls.returncode != 0 and f"credential {info['id']} has been revoked" in ls.stderr
        assert len(ls.stderr.strip().splitlines()) == 1, ls.stderr
        # The mount's connections were closed; it cannot write any more.
        deadline = time.monotonic() + 20
        failed = 0
        while time.monotonic() < deadline and not failed:
            failed = errno_of((a_point / f"late-{time.monotonic()}.txt").write_text, "x")
            if not failed:
                failed = errno_of(os.fsync, os.open(a_point / "by-a.txt", os.O_RDONLY))
            time.sleep(0.5)
        assert failed, "a revoked mount could still write"
    finally:
        a.unmount(a_point)
    logs = "".join((Path(str(n["data_dir"])) / "node.log").read_text() for n in cluster.nodes())
    assert f"credential {info['id']} has been revoked" in logs
    assert f"connections of revoked credential {info['id']}" in logs
    cluster.unmount(rw)


def _mount_source(m: Mount, addresses: str, point: Path, secret: Path) -> None:
    point.mkdir(exist_ok=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "prismfs.cli.mount_helper_main",
            addresses,
            str(point),
            "-o",
            f"secret={secret},log={m.log},pidfile={m.pidfile},failmode=eio,failtimeout=5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **m.env},
    )
    assert result.returncode == 0, result.stderr + m.log.read_text()


MUTATIONS = ("none", "flip", "truncate", "garbage", "kind")


def _mutated(frame: bytes, how: str, rng: random.Random) -> bytes:
    if how == "flip":
        out = bytearray(frame)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if how == "truncate":
        return frame[: rng.randrange(len(frame))]
    if how == "garbage":
        return rng.randbytes(rng.randint(1, 300))
    if how == "kind":
        out = bytearray(frame)
        out[5] = rng.randrange(256)  # the frame kind byte
        return bytes(out)
    return frame


async def _attack(address: str, creds: ClusterCredentials | None, data: bytes) -> None:
    """Send ``data`` (after authenticating as ``creds``, or right after the
    HELLO) and read whatever comes back until the node closes or 0.3 s passed."""
    import ssl

    from prismfs.wire.auth import client_handshake
    from prismfs.wire.stream import FramedStream

    host, port = address.rsplit(":", 1)
    tls = ssl.create_default_context()  # (the nodes talk TLS; anyone may begin it)
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    stream = trio.SSLStream(await trio.open_tcp_stream(host, int(port)), tls)
    try:
        if creds is not None:
            await client_handshake(FramedStream(stream), creds, timeout=5)
        else:
            await stream.receive_some(4096)  # the HELLO
        await stream.send_all(data)
        with trio.move_on_after(0.3):
            while await stream.receive_some(65536):
                pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


def test_fuzzed_frames_as_each_role_crash_nothing_and_change_nothing(cluster: Mount) -> None:
    """Every message type, random and mutated, as a stranger (before the
    handshake) and as each role: the node stays up and answers at once,
    and nothing a node can observe changes. (Node-role frames are only
    broken ones: a node may legitimately change anything.)"""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from prismfs.wire.frames import FrameKind, encode_frame

    node, client, read_only = _creds(cluster)
    addresses = _addresses(cluster)
    roles: dict[str, ClusterCredentials | None] = {
        "stranger": None,
        "node": node,
        "client": client,
        "read-only": read_only,
    }
    classes = sorted(registered_messages().values(), key=lambda c: c.__name__)

    async def leader() -> str:
        async with open_rpc_pool(node, connect_timeout=2) as pool:
            status = (await pool.call(addresses[0], RaftStatus(), timeout=5)).message
            assert isinstance(status, RaftStatusReply)
            return status.leader_address

    target = trio.run(leader)
    before = trio.run(_observed, node, addresses)

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        role=st.sampled_from(sorted(roles)),
        cls=st.sampled_from(classes),
        how=st.sampled_from(MUTATIONS),
        kind=st.sampled_from([FrameKind.REQUEST, FrameKind.NOTIFY]),
        seed=st.integers(0, 2**32),
    )
    def attack(role: str, cls: type[Message], how: str, kind: FrameKind, seed: int) -> None:
        rng = random.Random(seed)
        if role == "node" and how in ("none", "flip", "kind"):
            how = "garbage"  # a node's well-formed messages are obeyed
        if role in ("client", "read-only") and how == "none" and cls.__name__ == "PutShard":
            how = "truncate"  # a stored shard is a change too (an orphan, swept later)
        frame = encode_frame(kind, 1, encode_message(random_instance(cls, rng)))

        async def run() -> None:
            with trio.fail_after(15):
                await _attack(target, roles[role], _mutated(frame, how, rng))
                async with open_rpc_pool(client, connect_timeout=2) as pool:
                    reply = await pool.call(target, Ping(), timeout=5)
                    assert isinstance(reply.message, Pong)

        trio.run(run)

    attack()
    assert trio.run(_observed, node, addresses) == before
    for n in cluster.nodes():
        assert process_alive(int(n["pid"]))  # type: ignore[call-overload]
