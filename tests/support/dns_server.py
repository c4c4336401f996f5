"""A tiny authoritative DNS server on 127.0.0.1 (UDP) answering TXT queries, built with
dnspython, so DKIM tests look keys up over real DNS instead of a dict.

Records are published as a zone would hold them: a long TXT value is split into
character-strings of at most 255 bytes, and the resolver side (:meth:`dnsfunc`) joins
them back the way dkimpy's own DNS plug does.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.support.ports import free_port
from tests.support.service import Service

MAX_STRING = 255  # one DNS character-string


class TxtDnsServer(Service):
    """Serves ``publish()``-ed TXT records; every other name is NXDOMAIN."""

    def __init__(self, port: int | None = None, ttl: int = 60) -> None:
        self.host = "127.0.0.1"
        self.port: int = port if port is not None else free_port()
        self.ttl = ttl
        self.queries: list[str] = []
        self._records: dict[dns.name.Name, list[list[bytes]]] = {}
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def publish(self, name: str, value: str | Sequence[str]) -> None:
        """Add a TXT record: a str is split into 255-byte strings, a sequence is taken
        as the strings themselves (as a zone file line would list them)."""
        if isinstance(value, str):
            raw = value.encode()
            strings = [raw[i : i + MAX_STRING] for i in range(0, len(raw), MAX_STRING)] or [b""]
        else:
            strings = [part.encode() for part in value]
        with self._lock:
            self._records.setdefault(dns.name.from_text(name), []).append(strings)

    def start(self) -> TxtDnsServer:
        if self._sock is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.host, self.port))
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="txt-dns", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if sock is not None:
            sock.close()

    def dnsfunc(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        """dkimpy's ``dnsfunc``: the TXT record at ``name`` from this server, or None."""
        qname = name.decode() if isinstance(name, bytes) else name
        query = dns.message.make_query(qname, dns.rdatatype.TXT)
        response = dns.query.udp(query, self.host, port=self.port, timeout=timeout)
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                for rdata in rrset:
                    return b"".join(rdata.strings)
        return None

    def _serve(self) -> None:
        while self._sock is not None:
            sock = self._sock
            try:
                wire, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(wire)
            except Exception:  # a malformed packet: a real server drops it too
                continue
            sock.sendto(self._answer(query).to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        self.queries.append(question.name.to_text())
        with self._lock:
            records = self._records.get(question.name)
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT:
            rrset = dns.rrset.from_text_list(
                question.name,
                self.ttl,
                dns.rdataclass.IN,
                dns.rdatatype.TXT,
                [" ".join(_quoted(part) for part in strings) for strings in records],
            )
            response.answer.append(rrset)
        return response


def _quoted(part: bytes) -> str:
    escaped = part.decode("ascii", "backslashreplace").replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
