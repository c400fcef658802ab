"""``HOST:PORT`` addresses as users type them (``[::1]:7070`` for IPv6)."""

from __future__ import annotations

from prismfs.errors import InvalidArgument


def parse_address(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if text.startswith("[") and "]" in text:
        inside, _, rest = text[1:].partition("]")
        host, port_text = inside, rest[1:] if rest.startswith(":") else ""
        sep = ":" if port_text else ""
    elif not sep or ":" in host:
        host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise InvalidArgument(f"address {text!r} needs a port, as HOST:PORT")
        return host or "127.0.0.1", default_port
    try:
        port = int(port_text)
    except ValueError:
        raise InvalidArgument(f"address {text!r} has a bad port {port_text!r}") from None
    if not 0 <= port <= 65535 or not host:
        raise InvalidArgument(f"address {text!r} is not HOST:PORT with a port up to 65535")
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
