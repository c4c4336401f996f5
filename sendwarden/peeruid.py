"""The uid of the local process at the other end of an MTA's TCP connection.

Sendmail's MSP (``sendmail -t``, PHP ``mail()``, cron) hands local mail to the MTA over
SMTP on loopback, and Sendmail records no uid for it: ``{auth_author}`` is the AUTH=
parameter the client *wrote*, which any local process can set to anything. The kernel,
however, records which uid created each socket, and shows it in ``/proc/net/tcp``. A
client socket found there with exactly the connection's four addresses was made by that
uid: a proven identity, like Postfix's own "from userid N" record. A remote client has no
local socket, so nothing is found and nothing is claimed.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from pathlib import Path

from sendwarden.policy.facts import IPAddress

log = logging.getLogger(__name__)

PROC_NET = Path("/proc/net")
ESTABLISHED = "01"


def _hex_address(address: IPAddress, port: int) -> tuple[str, str]:
    """An address and port as /proc/net/tcp{,6} writes them (host byte order words)."""
    packed = address.packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{word:08X}" for word in words), f"{port:04X}"


def _candidates(address: IPAddress) -> list[tuple[str, IPAddress]]:
    """Where a socket with this address shows: IPv4 sockets in ``tcp``; an IPv6
    socket talking IPv4 in ``tcp6`` as ``::ffff:a.b.c.d``."""
    if isinstance(address, ipaddress.IPv4Address):
        return [("tcp", address), ("tcp6", ipaddress.IPv6Address(f"::ffff:{address}"))]
    if address.ipv4_mapped is not None:
        return [("tcp", address.ipv4_mapped), ("tcp6", address)]
    return [("tcp6", address)]


def socket_owner_uid(
    client: tuple[IPAddress, int], server: tuple[IPAddress, int], proc_net: Path = PROC_NET
) -> int | None:
    """The uid owning the established client socket ``client -> server``, or None when
    no local socket has those addresses (a remote client) or it cannot be read."""
    (client_address, client_port), (server_address, server_port) = client, server
    servers = dict(_candidates(server_address))
    for table, local in _candidates(client_address):
        remote = servers.get(table)
        if remote is None:
            continue
        want_local = ":".join(_hex_address(local, client_port))
        want_remote = ":".join(_hex_address(remote, server_port))
        try:
            with (proc_net / table).open() as lines:
                next(lines, None)  # the column titles
                for line in lines:
                    fields = line.split()
                    if (
                        len(fields) > 7
                        and fields[1] == want_local
                        and fields[2] == want_remote
                        and fields[3] == ESTABLISHED
                    ):
                        return int(fields[7])
        except OSError as error:
            log.warning("cannot read %s: %s", proc_net / table, error.strerror)
            return None
    return None


def parse_endpoint(address: str | None, port: str | None) -> tuple[IPAddress, int] | None:
    """An MTA macro pair (``{daemon_addr}``, ``{daemon_port}``) as an endpoint, or None."""
    if not address or not port:
        return None
    try:
        parsed = ipaddress.ip_address(address.strip("[]").removeprefix("IPv6:").split("%")[0])
        number = int(port)
    except ValueError:
        return None
    return (parsed, number) if 0 < number < 65536 else None
