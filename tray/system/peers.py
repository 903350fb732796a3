"""Who is on the other end of a loopback TCP connection.

On Linux every socket's owner is in ``/proc/net/tcp`` (IPv4) and
``/proc/net/tcp6`` (IPv6), readable by every user: the client's end of a
connection is the row whose local address is the client's and whose remote
address is ours, and its ``uid`` column is the user whose program opened it.

macOS and Windows have no such table open to an ordinary user (``lsof`` and
``GetExtendedTcpTable`` need privileges or give only a PID); there
:func:`peer_uid` answers None and :func:`peer_lookup_available` False, and
:class:`OwnUserCheck` never vouches for a connection: what only the user may
read needs the status API's token there.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
TABLES = ("tcp", "tcp6")
OWN_UID = os.getuid() if hasattr(os, "getuid") else None  # None on Windows, which has no peer lookup

Address = tuple[str, int]


def proc_net_address(field: str) -> Address:
    """An ``ADDRESS:PORT`` field of ``/proc/net/tcp{,6}`` as (ip, port); IPv4-mapped IPv6 as IPv4.

    The address is in the kernel's byte order: each 32-bit word little-endian on x86 and ARM.

    >>> proc_net_address("0100007F:2CAB")
    ('127.0.0.1', 11435)
    >>> proc_net_address("00000000000000000000000001000000:9C40")
    ('::1', 40000)
    >>> proc_net_address("0000000000000000FFFF00000100007F:0050")
    ('127.0.0.1', 80)
    """
    hex_address, hex_port = field.rsplit(":", 1)
    raw = bytes.fromhex(hex_address)
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(packed)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(hex_port, 16)


def normalized(address: Address) -> Address:
    """``address`` as :func:`proc_net_address` writes it (``::ffff:127.0.0.1`` is ``127.0.0.1``).

    >>> normalized(("::ffff:127.0.0.1", 5)), normalized(("0:0::1", 6))
    (('127.0.0.1', 5), ('::1', 6))
    """
    ip = ipaddress.ip_address(address[0].split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(address[1])


def uid_of_connection(table: str, local: Address, remote: Address) -> int | None:
    """The ``uid`` of the socket in a ``/proc/net/tcp{,6}`` table with these local and remote addresses.

    >>> table = (
    ...     "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\\n"
    ...     "   0: 0100007F:2CAB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 48213 1\\n"
    ...     "   1: 0100007F:2CAB 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 48300 1\\n"
    ...     "   2: 0100007F:9C40 0100007F:2CAB 01 00000000:00000000 00:00000000 00000000  1001        0 48301 1\\n"
    ... )
    >>> uid_of_connection(table, ("127.0.0.1", 40000), ("127.0.0.1", 11435))
    1001
    >>> uid_of_connection(table, ("127.0.0.1", 40001), ("127.0.0.1", 11435)) is None
    True
    """
    wanted = (normalized(local), normalized(remote))
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            if (proc_net_address(fields[1]), proc_net_address(fields[2])) == wanted:
                return int(fields[7])
        except ValueError:
            continue
    return None


LISTEN = "0A"  # the ``st`` column of a listening socket


def uid_of_listener(table: str, port: int) -> int | None:
    """The ``uid`` of the socket listening on ``port`` in a ``/proc/net/tcp{,6}`` table.

    >>> table = (
    ...     "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\\n"
    ...     "   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 48213 1\\n"
    ...     "   1: 0100007F:9C40 0100007F:1F40 01 00000000:00000000 00:00000000 00000000  1000        0 48300 1\\n"
    ... )
    >>> uid_of_listener(table, 8000), uid_of_listener(table, 40000)
    (1001, None)
    """
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or fields[3] != LISTEN:
            continue
        try:
            if proc_net_address(fields[1])[1] == port:
                return int(fields[7])
        except ValueError:
            continue
    return None


def listener_uid(port: int, proc: Path = PROC) -> int | None:
    """The uid of the program listening on TCP ``port`` here; None when it cannot be told or none listens."""
    for name in TABLES:
        try:
            uid = uid_of_listener((proc / "net" / name).read_text(), port)
        except OSError:
            continue
        if uid is not None:
            return uid
    return None


def peer_lookup_available(proc: Path = PROC) -> bool:
    """Does this OS show whose a loopback connection is (Linux's ``/proc/net/tcp{,6}``)?"""
    return any((proc / "net" / name).exists() for name in TABLES)


def peer_uid(client: Address, server: Address, proc: Path = PROC) -> int | None:
    """The uid of the program at ``client`` connected to our socket at ``server``; None when it cannot be told."""
    for name in TABLES:
        try:
            table = (proc / "net" / name).read_text()
        except OSError:
            continue
        try:
            uid = uid_of_connection(table, client, server)
        except ValueError:
            continue
        if uid is not None:
            return uid
    return None


def _peer_lookup_here() -> bool:
    return peer_lookup_available()


@dataclass(frozen=True)
class OwnUserCheck:
    """Tells whether a loopback connection to one of our servers comes from a program of our own user."""

    own_uid: int | None = OWN_UID
    find_uid: Callable[[Address, Address], int | None] = peer_uid
    lookup: bool = field(default_factory=_peer_lookup_here)

    def is_own(self, client: Address | None, server: Address | None) -> bool:
        """Is the program at ``client``, connected to our socket at ``server``, run by our user?

        False where the OS does not show it (macOS, Windows, a row not found) or shows another user.

        >>> def find_uid(client, server):
        ...     return 1000 if client[1] == 40000 else 1001
        >>> server = ("127.0.0.1", 11436)
        >>> OwnUserCheck(1000, find_uid, True).is_own(("127.0.0.1", 40000), server)
        True
        >>> OwnUserCheck(1000, find_uid, True).is_own(("127.0.0.1", 40001), server)
        False
        >>> OwnUserCheck(1000, find_uid, lookup=False).is_own(("127.0.0.1", 40000), server)  # macOS, Windows
        False
        """
        if not self.lookup or self.own_uid is None or client is None or server is None:
            return False
        return self.find_uid(client, server) == self.own_uid
