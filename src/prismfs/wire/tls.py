"""TLS for every connection, anchored in a cluster CA.

By default (`cluster_server_context`, `cluster_client_context`) the CA is
derived from the cluster secret: its EC P-256 key is computed from
HMAC-SHA256(secret, "prismfs tls ca"), so every holder of the cluster secret
(a node) has the same CA without any file to copy, and each node issues
itself a certificate from it when it starts. A client credential, which
cannot derive the CA, carries the CA certificate in its file (written when
the credential is made). A client checks that the node's certificate chains
to the cluster's CA; it does not check the name in it, since only holders of
the cluster secret can have such a certificate (and the HMAC handshake inside
TLS proves the cluster secret again).

A node given ``--tls-cert/--tls-key`` serves that certificate instead; a
client given ``--tls-ca`` (that CA) verifies the chain and that it was issued
for the address it dialled (a hostname or an IP address in the
subjectAltName). ``--insecure`` turns TLS off on a node or a client; a
cluster is all TLS or all insecure.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prismfs.errors import ConfigError


@dataclass(frozen=True)
class TlsConfig:
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    insecure: bool = False  # no TLS at all

    @property
    def serves(self) -> bool:
        return self.cert is not None


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    if tls.cert is None or tls.key is None:
        raise ConfigError("TLS needs both a certificate (--tls-cert) and a key (--tls-key)")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS certificate {tls.cert} / key {tls.key}: {exc}"
        ) from None
    return ctx


def client_context(ca: Path) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS CA {ca}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


_CA_NOT_BEFORE = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
_CA_NOT_AFTER = datetime.datetime(2200, 1, 1, tzinfo=datetime.UTC)
NODE_CERT_DAYS = 3650


@functools.lru_cache(maxsize=8)
def _ca(secret: bytes, cluster_id: str) -> tuple[object, bytes]:
    """(private key, certificate PEM) of the cluster CA derived from ``secret``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    seed = hmac.new(secret, b"prismfs tls ca", hashlib.sha256).digest()
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256's n
    key = ec.derive_private_key(int.from_bytes(seed, "big") % (order - 1) + 1, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"PrismFS cluster {cluster_id}")])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(int.from_bytes(seed[:16], "big") >> 1 or 1)
        .not_valid_before(_CA_NOT_BEFORE)
        .not_valid_after(_CA_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


def cluster_ca_pem(secret: bytes, cluster_id: str) -> bytes:
    """The cluster CA's certificate (PEM), for client credentials to carry."""
    return _ca(secret, cluster_id)[1]


def _node_cert(secret: bytes, cluster_id: str, name: str) -> tuple[bytes, bytes]:
    """(certificate chain PEM, key PEM) of a new node certificate from the cluster CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key, ca_pem = _ca(secret, cluster_id)
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name or "node")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=NODE_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM) + ca_pem, key_pem


def cluster_server_context(secret: bytes, cluster_id: str, name: str = "") -> ssl.SSLContext:
    """A node's TLS context with a certificate it issues itself from the
    cluster CA (kept in memory; the key only passes through a private
    temporary file while OpenSSL loads it)."""
    chain, key = _node_cert(secret, cluster_id, name)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="prismfs-tls-") as tmp:
        os.chmod(tmp, 0o700)
        cert_file, key_file = Path(tmp) / "node.crt", Path(tmp) / "node.key"
        cert_file.write_bytes(chain)
        key_file.touch(mode=0o600)
        key_file.write_bytes(key)
        ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def cluster_client_context(ca_pem: bytes) -> ssl.SSLContext:
    """A client's TLS context that trusts only the cluster CA ``ca_pem``."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem.decode())
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"the credential's cluster CA is not a certificate: {exc}") from None
    ctx.check_hostname = False  # every certificate of this CA is a node's (see the module)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
