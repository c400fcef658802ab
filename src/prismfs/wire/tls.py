"""Optional TLS for node connections, anchored in a cluster CA.

A node given ``--tls-cert/--tls-key`` serves TLS; a client given ``--tls-ca``
(the cluster CA) verifies the node's certificate chain and that it was issued
for the address it dialled (a hostname or an IP address in the subjectAltName).
TLS protects the traffic; the HMAC handshake still runs inside it, so a client
needs the cluster secret whether or not TLS is on.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from prismfs.errors import ConfigError


@dataclass(frozen=True)
class TlsConfig:
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

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
