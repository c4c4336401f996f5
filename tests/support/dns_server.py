"""A tiny authoritative DNS server on 127.0.0.1 (UDP), built with dnspython, so tests
look names up over real DNS instead of a dict: TXT records for DKIM keys, A and TXT
records for DNSBL listings, and zones that misbehave (never answer, answer SERVFAIL)
for the failures a DNSBL sweep must survive.

Records are published as a zone would hold them: a long TXT value is split into
character-strings of at most 255 bytes, and the resolver side (:meth:`dnsfunc`) joins
them back the way dkimpy's own DNS plug does.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Sequence
from typing import Self

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


class DnsServer(Service):
    """Serves ``publish()``-ed TXT and ``publish_a()``-ed A records; every other name is
    NXDOMAIN, except under zones made ``unanswered()`` (dropped) or ``failing()``
    (SERVFAIL)."""

    def __init__(self, port: int | None = None, ttl: int = 60) -> None:
        self.host = "127.0.0.1"
        self.port: int = port if port is not None else free_port()
        self.ttl = ttl
        self.queries: list[str] = []
        # name -> record type -> the records' texts, in zone-file syntax
        self._records: dict[dns.name.Name, dict[dns.rdatatype.RdataType, list[str]]] = {}
        self._unanswered: set[dns.name.Name] = set()
        self._failing: set[dns.name.Name] = set()
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
        self._add(name, dns.rdatatype.TXT, " ".join(_quoted(part) for part in strings))

    def publish_a(self, name: str, address: str) -> None:
        """Add an A record (a DNSBL listing code such as 127.0.0.2)."""
        self._add(name, dns.rdatatype.A, str(ipaddress.IPv4Address(address)))

    def withdraw(self, name: str) -> None:
        """Remove every record at ``name`` (a delisting): it is NXDOMAIN again."""
        with self._lock:
            self._records.pop(dns.name.from_text(name), None)

    def unanswered(self, zone: str) -> None:
        """Drop every query for ``zone`` and names under it: the client times out."""
        with self._lock:
            self._unanswered.add(dns.name.from_text(zone))

    def failing(self, zone: str) -> None:
        """Answer SERVFAIL for ``zone`` and names under it."""
        with self._lock:
            self._failing.add(dns.name.from_text(zone))

    @property
    def address(self) -> str:
        """``HOST:PORT``, as ``alerts.dns_servers`` takes it."""
        return f"{self.host}:{self.port}"

    def start(self) -> Self:
        if self._sock is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.host, self.port))
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
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

    def _add(self, name: str, rdtype: dns.rdatatype.RdataType, text: str) -> None:
        with self._lock:
            by_type = self._records.setdefault(dns.name.from_text(name), {})
            by_type.setdefault(rdtype, []).append(text)

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
            response = self._answer(query)
            if response is not None:
                sock.sendto(response.to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """The response to ``query``; None to leave it unanswered."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        self.queries.append(question.name.to_text())
        with self._lock:
            if _under(question.name, self._unanswered):
                return None
            if _under(question.name, self._failing):
                response.set_rcode(dns.rcode.SERVFAIL)
                return response
            records = self._records.get(question.name)
            texts = list(records.get(question.rdtype, ())) if records is not None else []
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif texts:  # else NOERROR with no answer: the name exists, this type does not
            response.answer.append(
                dns.rrset.from_text_list(
                    question.name, self.ttl, dns.rdataclass.IN, question.rdtype, texts
                )
            )
        return response


#: The name the DKIM tests know it by.
TxtDnsServer = DnsServer


def _under(name: dns.name.Name, zones: set[dns.name.Name]) -> bool:
    return any(name.is_subdomain(zone) for zone in zones)


def _quoted(part: bytes) -> str:
    escaped = part.decode("ascii", "backslashreplace").replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
