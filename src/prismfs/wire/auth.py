"""Cluster credentials, roles, and the HMAC challenge-response every connection starts with.

A credential file (mode 0600) holds the cluster id, a role, a credential id
and a 256-bit key:

- ``node``: the cluster secret itself (``cluster.secret``, made once by
  ``prismfs cluster init``), held by storage nodes and by operators' hosts
  that run admin commands. Everything is allowed.
- ``client`` and ``read-only``: a key derived from the cluster secret, the
  role and the credential id (``client.secret``, or ``prismfs credentials
  create``), held by mount and file-command hosts. A server recomputes the
  key from its cluster secret, so it needs no list of valid credentials,
  only of revoked ones. A client holding its key learns nothing of the
  cluster secret nor of any other credential's key.

Handshake, before any other frame (both directions authenticated)::

    server -> client  HELLO    Hello(protocol, cluster_id, nonce_s)
    client -> server  AUTH     AuthProof(nonce_c, proof_c, name, role, credential)
    server -> client  AUTH_OK  AuthOk(proof_s)          or ERROR + close

    key     = cluster secret                        (role node)
            = HMAC-SHA256(secret, "prismfs credential" | role | id)  (other roles)
    proof_c = HMAC-SHA256(key, "prismfs-v2 client" | cluster_id | role | id | nonce_s | nonce_c)
    proof_s = HMAC-SHA256(key, "prismfs-v2 server" | cluster_id | role | id | nonce_s | nonce_c)

Fresh nonces on both sides make every proof single-use, so a recorded
handshake cannot be replayed; the distinct labels stop a server's proof
being reflected back as a client's; the role and id inside the proof stop
them being changed on the way. A node's credential id is its node id, so
the server knows which member a connection speaks for (Raft messages must
come from the member they name). Keys never cross the wire. Without TLS
the traffic after the handshake is authenticated only at connection set-up;
TLS (on unless a node runs ``--insecure``) protects the rest.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prismfs.durable import write_atomic
from prismfs.errors import (
    AlreadyExists,
    AuthenticationFailed,
    ConfigError,
    InvalidArgument,
    PermissionDenied,
    ProtocolError,
)
from prismfs.ids import ClusterId
from prismfs.wire.codec import decode_message
from prismfs.wire.frames import Frame, FrameKind
from prismfs.wire.messages import PROTOCOL_VERSION, AuthOk, AuthProof, ErrorReply, Hello
from prismfs.wire.stream import FramedStream
from prismfs.wire.tls import cluster_ca_pem

SECRET_BYTES = 32
NONCE_BYTES = 32
SECRET_FILE_NAME = "cluster.secret"
CLIENT_SECRET_FILE_NAME = "client.secret"
DEFAULT_CLIENT_CREDENTIAL = "default-client"
"""The client credential ``cluster init`` writes (``client.secret``)."""

NODE = "node"
CLIENT = "client"
READ_ONLY = "read-only"
ROLES = (NODE, CLIENT, READ_ONLY)
EVERYONE = frozenset(ROLES)
WRITERS = frozenset((NODE, CLIENT))
NODES = frozenset((NODE,))
MAX_CREDENTIAL_ID = 64


@dataclass(frozen=True)
class ClusterCredentials:
    cluster_id: ClusterId
    secret: bytes
    """The key this holder proves: the cluster secret for a node, else a derived key."""
    role: str = NODE
    credential: str = ""
    """A client credential's id (empty for a node's: the node id is bound per connection)."""
    ca: bytes = b""
    """A client credential's copy of the cluster CA certificate (PEM): what it
    checks the nodes' TLS certificates against (a node derives it)."""

    def __repr__(self) -> str:  # never print the secret by accident
        return (
            f"ClusterCredentials(cluster_id={self.cluster_id!r}, role={self.role!r}, "
            f"credential={self.credential!r}, secret=<hidden>)"
        )

    @classmethod
    def generate(cls) -> ClusterCredentials:
        return cls(ClusterId(secrets.token_hex(8)), secrets.token_bytes(SECRET_BYTES))

    def derive(self, role: str, credential: str) -> ClusterCredentials:
        """A client credential of ``role`` named ``credential``; only the cluster
        secret (a node's credentials) can make one."""
        if self.role != NODE:
            raise PermissionDenied("only the cluster secret (a node's credential) derives others")
        check_credential(role, credential)
        return ClusterCredentials(
            self.cluster_id,
            _derived_key(self.secret, role, credential),
            role,
            credential,
            self.tls_ca(),
        )

    def tls_ca(self) -> bytes:
        """The cluster CA certificate (PEM) this holder trusts."""
        if self.role == NODE:
            return cluster_ca_pem(self.secret, self.cluster_id)
        if not self.ca:
            raise ConfigError(
                f"credential {self.credential} carries no cluster CA for TLS (made before "
                "TLS was on by default): make a new one with 'prismfs credentials create', "
                "or give --tls-ca, or --insecure for a cluster without TLS"
            )
        return self.ca


def new_credential_id(role: str) -> str:
    return f"{'ro' if role == READ_ONLY else 'c'}-{secrets.token_hex(6)}"


def check_credential(role: str, credential: str) -> None:
    if role not in (CLIENT, READ_ONLY):
        raise InvalidArgument(f"a derived credential's role is client or read-only, not {role!r}")
    if (
        not credential
        or len(credential) > MAX_CREDENTIAL_ID
        or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in credential)
    ):
        raise InvalidArgument(
            f"a credential id is 1-{MAX_CREDENTIAL_ID} letters, digits, '-', '_' or '.'"
        )


def _derived_key(secret: bytes, role: str, credential: str) -> bytes:
    msg = b"prismfs credential\x00" + role.encode() + b"\x00" + credential.encode()
    return hmac.new(secret, msg, hashlib.sha256).digest()


def write_secret_file(path: Path, creds: ClusterCredentials, *, overwrite: bool = False) -> None:
    """Write credentials 0600 via temp file + fsync + rename + fsync of the directory."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise AlreadyExists(f"{path} already exists; refusing to replace a credential file")
    text = f'cluster_id = "{creds.cluster_id}"\nsecret = "{creds.secret.hex()}"\n'
    if creds.role != NODE:
        text += f'role = "{creds.role}"\ncredential = "{creds.credential}"\n'
        if creds.ca:
            text += "ca = '''\n" + creds.ca.decode() + "'''\n"
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
        role = data.get("role", NODE)
        credential = data.get("credential", "")
        ca = str(data.get("ca", "")).encode()
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError):
        raise ConfigError(f"secret file {path} is malformed") from None
    if not isinstance(cluster_id, str) or len(secret) < 16:
        raise ConfigError(f"secret file {path} is malformed")
    if role != NODE:
        try:
            check_credential(role, credential)
        except InvalidArgument as exc:
            raise ConfigError(f"secret file {path}: {exc.message}") from None
    return ClusterCredentials(ClusterId(cluster_id), secret, role, credential, ca)


def _proof(key: bytes, cluster_id: str, label: bytes, proof: AuthProof, nonce_s: bytes) -> bytes:
    msg = b"\x00".join(
        (
            b"prismfs-v2 " + label,
            cluster_id.encode(),
            proof.role.encode(),
            proof.credential.encode(),
            nonce_s + proof.nonce,
        )
    )
    return hmac.new(key, msg, hashlib.sha256).digest()


@dataclass(frozen=True)
class Peer:
    """Who a connection authenticated as."""

    role: str
    credential: str  # a node's id, or a client credential's id
    name: str  # what the client calls itself (free text, for logs)


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
    conn: FramedStream,
    creds: ClusterCredentials,
    timeout: float,
    revoked: Callable[[str], bool] = lambda credential: False,
) -> Peer:
    """Authenticate the client on a fresh connection; raise on any failure.

    On a wrong proof the client is told so in an ERROR frame before the caller
    closes the connection, so that it can report a clear message.
    """
    nonce_s = secrets.token_bytes(NONCE_BYTES)
    hello = Hello(PROTOCOL_VERSION, creds.cluster_id, nonce_s)
    await conn.send_direct(FrameKind.HELLO, 0, hello)
    frame = _expect(
        await conn.receive_within(timeout), FrameKind.AUTH, "the AUTH frame", from_server=False
    )
    auth = decode_message(frame.header)
    if not isinstance(auth, AuthProof) or len(auth.nonce) != NONCE_BYTES:
        raise ProtocolError("malformed AUTH frame")
    if auth.role == NODE:
        if len(auth.credential) > MAX_CREDENTIAL_ID:
            raise ProtocolError("malformed AUTH frame")
        key = creds.secret
    else:
        try:
            check_credential(auth.role, auth.credential)
        except InvalidArgument:
            raise ProtocolError("malformed AUTH frame") from None
        key = _derived_key(creds.secret, auth.role, auth.credential)
    if not hmac.compare_digest(_proof(key, creds.cluster_id, b"client", auth, nonce_s), auth.proof):
        err = AuthenticationFailed(
            "wrong cluster secret" if auth.role == NODE else "wrong credential for this cluster"
        )
        await conn.send_direct(FrameKind.ERROR, 0, ErrorReply.from_error(err))
        raise err
    if auth.role != NODE and revoked(auth.credential):
        err = AuthenticationFailed(f"credential {auth.credential} has been revoked")
        await conn.send_direct(FrameKind.ERROR, 0, ErrorReply.from_error(err))
        raise err
    await conn.send_direct(
        FrameKind.AUTH_OK, 0, AuthOk(_proof(key, creds.cluster_id, b"server", auth, nonce_s))
    )
    return Peer(auth.role, auth.credential, auth.client_name)


async def client_handshake(
    conn: FramedStream,
    creds: ClusterCredentials,
    timeout: float,
    client_name: str = "",
    node_id: str = "",
) -> Hello:
    """Authenticate to a server and check that it proves the same secret.
    ``node_id``: the member a node's connection speaks for."""
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
    credential = node_id if creds.role == NODE else creds.credential
    auth = AuthProof(secrets.token_bytes(NONCE_BYTES), b"", client_name, creds.role, credential)
    auth = AuthProof(
        auth.nonce,
        _proof(creds.secret, creds.cluster_id, b"client", auth, hello.nonce),
        client_name,
        creds.role,
        credential,
    )
    await conn.send_direct(FrameKind.AUTH, 0, auth)
    frame = _expect(
        await conn.receive_within(timeout), FrameKind.AUTH_OK, "AUTH_OK", from_server=True
    )
    ok = decode_message(frame.header)
    if not isinstance(ok, AuthOk):
        raise ProtocolError("malformed AUTH_OK frame")
    expected = _proof(creds.secret, creds.cluster_id, b"server", auth, hello.nonce)
    if not hmac.compare_digest(ok.proof, expected):
        raise AuthenticationFailed("server could not prove it holds the cluster secret")
    return hello
