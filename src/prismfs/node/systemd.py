"""Running a node under systemd: readiness notification, the unit file, journald.

``Type=notify`` units wait for the service to say ``READY=1`` on the datagram
socket named by ``NOTIFY_SOCKET`` (sd_notify(3)); the protocol is one
``KEY=VALUE`` line per datagram, so it is done here in a few lines rather than
with a dependency. A name starting with ``@`` is a Linux abstract socket (the
``@`` stands for a leading NUL byte). Outside systemd there is no
``NOTIFY_SOCKET`` and `notify` does nothing.

systemd connects a service's stderr to journald and says so in
``JOURNAL_STREAM`` (``DEVICE:INODE`` of that stream): `journald_stderr` checks
that stderr still is that stream (a child whose stderr was redirected
inherits the variable but not the stream), and the node then writes lines with
a ``<N>`` syslog priority prefix and no time stamp (journald adds its own).
"""

from __future__ import annotations

import os
import socket
import sys

NOTIFY_ENV = "NOTIFY_SOCKET"
UNIT_NAME = "prismfs-node@.service"

UNIT_TEMPLATE = """\
# A PrismFS storage node. The instance names its configuration file:
# prismfs-node@NAME.service runs `prismfs node start --config {etc}/NAME.toml`,
# which must set node.data_dir and node.listen at least (docs/configuration.md).
# Installed by `prismfs install-systemd`; a copy is in packaging/systemd/.
[Unit]
Description=PrismFS storage node %i
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={command} node start --config {etc}/%i.toml
Restart=on-failure
RestartSec=5s
TimeoutStartSec=120s
TimeoutStopSec=60s
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
"""


def unit_text(command: str, etc: str = "/etc/prismfs") -> str:
    """The ``prismfs-node@.service`` unit that runs ``command`` (the prismfs command)."""
    return UNIT_TEMPLATE.format(command=command, etc=etc)


def notify(state: str) -> bool:
    """Tell systemd ``state`` (``READY=1``, ``STOPPING=1``); False outside systemd.
    A failure to send is not the node's problem: it is reported as False."""
    target = os.environ.get(NOTIFY_ENV, "")
    if not target or target[0] not in "/@":
        return False
    address = "\0" + target[1:] if target[0] == "@" else target
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True


def journald_stderr() -> bool:
    """Is stderr the journal stream systemd gave this process?"""
    expected = os.environ.get("JOURNAL_STREAM", "")
    device, sep, inode = expected.partition(":")
    if not (sep and device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))
