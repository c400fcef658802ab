"""Cluster credentials and the HMAC challenge-response every connection starts with.

The secret file (``cluster.secret``, mode 0600) holds the cluster id and a
256-bit random secret. It is created once by ``prismfs cluster init`` and
copied to every node and client that may talk to the cluster.

Handshake, before any other frame (both directions authenticated)::

    server -> client  HELLO    Hello(protocol, cluster_id, node_id, nonce_s)
    client -> server  AUTH     AuthProof(nonce_c, proof_c)
    server -> client  AUTH_OK  AuthOk(proof_s)          or ERROR + close

    proof_c = HMAC-SHA256(secret, "prismfs-v1 client" | cluster_id | nonce_s | nonce_c)
    proof_s = HMAC-SHA256(secret, "prismfs-v1 server" | cluster_id | nonce_s | nonce_c)

Fresh nonces on both sides make every proof single-use, so a recorded
handshake cannot be replayed, and the distinct labels stop a server's proof
being reflected back as a client's. The secret itself never crosses the wire.
Without TLS the traffic after the handshake is authenticated only at
connection set-up; use TLS where the network is not trusted.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from prismfs.durable import write_atomic
from prismfs.errors import AlreadyExists, AuthenticationFailed, ConfigError, ProtocolError
from prismfs.ids import ClusterId, NodeId
from prismfs.wire.codec import decode_message
from prismfs.wire.frames import Frame, FrameKind
from prismfs.wire.messages import PROTOCOL_VERSION, AuthOk, AuthProof, ErrorReply, Hello
from prismfs.wire.stream import FramedStream

SECRET_BYTES = 32
NONCE_BYTES = 32
SECRET_FILE_NAME = "cluster.secret"


@dataclass(frozen=True)
class ClusterCredentials:
    cluster_id: ClusterId
    secret: bytes

    def __repr__(self) -> str:  # never print the secret by accident
        return f"ClusterCredentials(cluster_id={self.cluster_id!r}, secret=<hidden>)"

    @classmethod
    def generate(cls) -> ClusterCredentials:
        return cls(ClusterId(secrets.token_hex(8)), secrets.token_bytes(SECRET_BYTES))


def write_secret_file(path: Path, creds: ClusterCredentials, *, overwrite: bool = False) -> None:
    """Write credentials 0600 via temp file + fsync + rename + fsync of the directory."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise AlreadyExists(f"{path} already exists; refusing to replace a cluster secret")
    text = f'cluster_id = "{creds.cluster_id}"\nsecret = "{creds.secret.hex()}"\n'
    write_atomic(path, text.encode(), mode=0o600)


def read_secret_file(path: Path) -> ClusterCredentials:
    """Load credentials; refuse a file that others can read, as ssh does for keys."""
    path = Path(path)
    try:
        st = path.stat()
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"secret file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"secret file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {path}"
        )
    try:
        data = tomllib.loads(raw.decode())
        cluster_id = data["cluster_id"]
        secret = bytes.fromhex(data["secret"])
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError):
        raise ConfigError(f"secret file {path} is malformed") from None
    if not isinstance(cluster_id, str) or len(secret) < 16:
        raise ConfigError(f"secret file {path} is malformed")
    return ClusterCredentials(ClusterId(cluster_id), secret)


def _proof(creds: ClusterCredentials, label: bytes, nonce_s: bytes, nonce_c: bytes) -> bytes:
    msg = b"prismfs-v1 " + label + b"\x00" + creds.cluster_id.encode() + b"\x00" + nonce_s + nonce_c
    return hmac.new(creds.secret, msg, hashlib.sha256).digest()


def _expect(frame: Frame | None, kind: FrameKind, what: str, *, from_server: bool) -> Frame:
    if frame is None:
        raise ProtocolError(f"connection closed before {what}")
    if frame.kind == FrameKind.ERROR and from_server:
        err = decode_message(frame.header)
        if isinstance(err, ErrorReply):
            raise err.to_error()
    if frame.kind != kind:
        raise ProtocolError(f"expected {what}, got a {frame.kind.name} frame")
    if frame.payload:
        raise ProtocolError(f"{what} must not carry a payload")
    return frame


async def server_handshake(
    conn: FramedStream, creds: ClusterCredentials, node_id: NodeId, timeout: float
) -> AuthProof:
    """Authenticate the client on a fresh connection; raise on any failure.

    On a wrong proof the client is told so in an ERROR frame before the caller
    closes the connection, so that it can report a clear message.
    """
    nonce_s = secrets.token_bytes(NONCE_BYTES)
    hello = Hello(PROTOCOL_VERSION, creds.cluster_id, node_id, nonce_s)
    await conn.send_direct(FrameKind.HELLO, 0, hello)
    frame = _expect(
        await conn.receive_within(timeout), FrameKind.AUTH, "the AUTH frame", from_server=False
    )
    auth = decode_message(frame.header)
    if not isinstance(auth, AuthProof) or len(auth.nonce) != NONCE_BYTES:
        raise ProtocolError("malformed AUTH frame")
    expected = _proof(creds, b"client", nonce_s, auth.nonce)
    if not hmac.compare_digest(expected, auth.proof):
        err = AuthenticationFailed("wrong cluster secret")
        await conn.send_direct(FrameKind.ERROR, 0, ErrorReply.from_error(err))
        raise err
    await conn.send_direct(
        FrameKind.AUTH_OK, 0, AuthOk(_proof(creds, b"server", nonce_s, auth.nonce))
    )
    return auth


async def client_handshake(
    conn: FramedStream, creds: ClusterCredentials, timeout: float, client_name: str = ""
) -> Hello:
    """Authenticate to a server and check that it proves the same secret."""
    frame = _expect(
        await conn.receive_within(timeout), FrameKind.HELLO, "the server's HELLO", from_server=True
    )
    hello = decode_message(frame.header)
    if not isinstance(hello, Hello) or len(hello.nonce) != NONCE_BYTES:
        raise ProtocolError("malformed HELLO frame")
    if hello.protocol != PROTOCOL_VERSION:
        raise ProtocolError(
            f"server speaks protocol {hello.protocol}, this client {PROTOCOL_VERSION}"
        )
    if hello.cluster_id != creds.cluster_id:
        raise AuthenticationFailed(
            f"server belongs to cluster {hello.cluster_id}, not {creds.cluster_id}"
        )
    nonce_c = secrets.token_bytes(NONCE_BYTES)
    proof = _proof(creds, b"client", hello.nonce, nonce_c)
    await conn.send_direct(FrameKind.AUTH, 0, AuthProof(nonce_c, proof, client_name))
    frame = _expect(
        await conn.receive_within(timeout), FrameKind.AUTH_OK, "AUTH_OK", from_server=True
    )
    ok = decode_message(frame.header)
    if not isinstance(ok, AuthOk):
        raise ProtocolError("malformed AUTH_OK frame")
    if not hmac.compare_digest(ok.proof, _proof(creds, b"server", hello.nonce, nonce_c)):
        raise AuthenticationFailed("server could not prove it holds the cluster secret")
    return hello
