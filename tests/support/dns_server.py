"""A tiny authoritative DNS server for tests, on UDP and TCP at one loopback address and port.

It runs in background threads, so it answers both sync tests and code on the test event loop.
The zone is mutable at any time:

    dns.set_mx("example.test", [(10, "mx1.example.test"), (20, "mx2.example.test")])
    dns.set_a("mx1.example.test", ["127.0.0.5"])
    dns.set_null_mx("nomail.test")        # MX 0 "."  (RFC 7505)
    dns.set_nxdomain("gone.test")         # NXDOMAIN for every type
    dns.set_servfail("broken.test")       # SERVFAIL for every type
    dns.set_timeout("slow.test")          # never answers

Names never configured answer NXDOMAIN; a name with records but none of the asked type answers
NOERROR with an empty answer (dnspython raises NoAnswer).
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

DEFAULT_TTL = 300
UDP_PAYLOAD_NO_EDNS = 512


@dataclass
class _Node:
    records: dict[int, list[str]] = field(default_factory=dict)  # rdtype -> rdata texts
    ttl: dict[int, int] = field(default_factory=dict)
    fault: str | None = None  # "nxdomain" | "servfail" | "timeout"


def _name(domain: str) -> dns.name.Name:
    return dns.name.from_text(domain.lower().rstrip(".") + ".")


class DnsServer:
    """Authoritative test DNS server; see the module docstring for the zone API."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._nodes: dict[dns.name.Name, _Node] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        # (name, rdtype text, "udp"|"tcp") of every query received, in order.
        self.queries: list[tuple[str, str, str]] = []

    # ----- lifecycle

    @property
    def nameserver(self) -> str:
        """This server as "host:port", one entry of MAILSLUICE_DNS_NAMESERVERS."""
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        owner = self
        self._stopping.clear()
        for _attempt in range(20):
            tcp = _TcpServer((self.host, self.port), _TcpHandler, bind_and_activate=True)
            port = tcp.server_address[1]
            try:
                udp = _UdpServer((self.host, port), _UdpHandler, bind_and_activate=True)
            except OSError:
                tcp.server_close()
                if self.port:
                    raise
                continue
            break
        else:
            raise OSError("no free port for UDP and TCP together")
        self.port = port
        for server in (tcp, udp):
            server.owner = owner
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    # ----- zone API

    def clear(self) -> None:
        """Forget every name and the query log."""
        with self._lock:
            self._nodes.clear()
            self.queries.clear()

    def _set(self, domain: str, rdtype: int, values: list[str], ttl: int) -> None:
        with self._lock:
            node = self._nodes.setdefault(_name(domain), _Node())
            node.fault = None
            if values:
                node.records[rdtype] = list(values)
                node.ttl[rdtype] = ttl
            else:
                node.records.pop(rdtype, None)

    def set_mx(self, domain: str, mxes: list[tuple[int, str]], ttl: int = DEFAULT_TTL) -> None:
        """MX records [(preference, host), ...]; an empty list removes the MX set."""
        values = [f"{pref} {_name(host) if host not in ('', '.') else '.'}" for pref, host in mxes]
        self._set(domain, dns.rdatatype.MX, values, ttl)

    def set_null_mx(self, domain: str, ttl: int = DEFAULT_TTL) -> None:
        """RFC 7505 null MX: `MX 0 .` (the domain accepts no mail)."""
        self._set(domain, dns.rdatatype.MX, ["0 ."], ttl)

    def set_a(self, host: str, addresses: list[str], ttl: int = DEFAULT_TTL) -> None:
        self._set(host, dns.rdatatype.A, addresses, ttl)

    def set_aaaa(self, host: str, addresses: list[str], ttl: int = DEFAULT_TTL) -> None:
        self._set(host, dns.rdatatype.AAAA, addresses, ttl)

    def set_txt(self, name: str, texts: list[str], ttl: int = DEFAULT_TTL) -> None:
        # A TXT string holds at most 255 characters: longer texts (DKIM keys) become several.
        chunked = [
            " ".join(f'"{t[i : i + 255]}"' for i in range(0, max(len(t), 1), 255)) for t in texts
        ]
        self._set(name, dns.rdatatype.TXT, chunked, ttl)

    def _fault(self, domain: str, fault: str) -> None:
        with self._lock:
            node = self._nodes.setdefault(_name(domain), _Node())
            node.records.clear()
            node.fault = fault

    def set_nxdomain(self, domain: str) -> None:
        """The name does not exist (for every query type)."""
        self._fault(domain, "nxdomain")

    def set_servfail(self, domain: str) -> None:
        """Every query for the name gets SERVFAIL."""
        self._fault(domain, "servfail")

    def set_timeout(self, domain: str) -> None:
        """Queries for the name are never answered (the resolver times out)."""
        self._fault(domain, "timeout")

    def remove(self, domain: str) -> None:
        with self._lock:
            self._nodes.pop(_name(domain), None)

    def query_count(self, domain: str | None = None, rdtype: str | None = None) -> int:
        """How many queries arrived (optionally for one name and/or type, e.g. "MX")."""
        wanted = str(_name(domain)) if domain else None
        with self._lock:
            counts = Counter(
                (n, t) for n, t, _ in self.queries if wanted in (None, n) and rdtype in (None, t)
            )
        return sum(counts.values())

    # ----- answering

    def answer(self, wire: bytes, transport: str) -> dns.message.Message | None:
        """The response to one query, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname = dns.name.from_text(question.name.to_text().lower())
        with self._lock:
            self.queries.append(
                (qname.to_text(), dns.rdatatype.to_text(question.rdtype), transport)
            )
            node = self._nodes.get(qname)
            fault = node.fault if node else "nxdomain"
            records = list(node.records.get(question.rdtype, [])) if node else []
            ttl = node.ttl.get(question.rdtype, DEFAULT_TTL) if node else DEFAULT_TTL
            exists = bool(node and node.records)
        if node is not None and fault is None and not exists:
            fault = "nxdomain"
        if fault == "timeout":
            return None
        if fault == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        if fault == "nxdomain":
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        if records:
            response.answer.append(
                dns.rrset.from_text_list(qname, ttl, dns.rdataclass.IN, question.rdtype, records)
            )
        return response


def _to_wire(response: dns.message.Message, query_wire: bytes, udp: bool) -> bytes:
    if not udp:
        return response.to_wire()
    limit = UDP_PAYLOAD_NO_EDNS
    try:
        query = dns.message.from_wire(query_wire)
        if query.edns >= 0:
            limit = max(query.payload, UDP_PAYLOAD_NO_EDNS)
    except Exception:
        pass
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        # Too big for UDP: send it truncated so the resolver retries over TCP.
        response.answer.clear()
        response.flags |= dns.flags.TC
        return response.to_wire()


class _UdpServer(socketserver.ThreadingUDPServer):
    owner: DnsServer
    daemon_threads = True
    allow_reuse_address = True


class _TcpServer(socketserver.ThreadingTCPServer):
    owner: DnsServer
    daemon_threads = True
    allow_reuse_address = True


class _UdpHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        owner = cast("_UdpServer | _TcpServer", self.server).owner
        response = owner.answer(data, "udp")
        if response is not None:
            sock.sendto(_to_wire(response, data, udp=True), self.client_address)


class _TcpHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn: socket.socket = self.request
        owner = cast("_UdpServer | _TcpServer", self.server).owner
        conn.settimeout(30)
        try:
            while not owner._stopping.is_set():
                head = _recv_exact(conn, 2)
                if head is None:
                    return
                wire = _recv_exact(conn, struct.unpack(">H", head)[0])
                if wire is None:
                    return
                response = owner.answer(wire, "tcp")
                if response is None:
                    # "Never answers": hold the connection until the client gives up.
                    owner._stopping.wait(30)
                    return
                out = _to_wire(response, wire, udp=False)
                conn.sendall(struct.pack(">H", len(out)) + out)
        except OSError:
            return


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
