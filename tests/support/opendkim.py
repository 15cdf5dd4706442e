"""Verifiers of DKIM signatures that are not ours: OpenDKIM (the `opendkim` filter's test mode,
`opendkim -t FILE`, with the public keys from a TestPublicKeys file instead of DNS) and dkimpy's
verifier (keys looked up in the test DNS server).

Debian 12's `opendkim-testmsg` fails every input with "dkim_chunk(): Syntax error", so the
filter's test mode stands in for it: the same libopendkim verifies.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import dkim
import dns.message
import dns.query
import dns.rdatatype

from mailsluice.dkim.keys import SigningKey

OPENDKIM = "/usr/sbin/opendkim"
_RESULT = re.compile(r"dkim=(\w+)[^;]*?header\.a=([\w-]+) header\.s=([\w.-]+)")


def opendkim_results(message: bytes, keys: list[SigningKey], tmp: Path) -> dict[str, str]:
    """{selector: pass|fail|...} for each DKIM signature of `message` (as received), as
    OpenDKIM judges it with the public keys of `keys`."""
    assert Path(OPENDKIM).exists(), "run scripts/install_system_deps.sh (Debian package opendkim)"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "keys").write_text("".join(f"{k.record_name} {k.dns_record()}\n" for k in keys))
    (tmp / "opendkim.conf").write_text(
        f"TestPublicKeys {tmp / 'keys'}\nMode v\nSyslog no\nAlwaysAddARHeader yes\nUserID root\n"
    )
    (tmp / "message").write_bytes(message)
    run = subprocess.run(
        [OPENDKIM, "-x", str(tmp / "opendkim.conf"), "-vvv", "-t", str(tmp / "message")],
        capture_output=True,
        timeout=60,
        check=True,
    )
    header = run.stdout.decode("utf-8", "replace").partition("hname='Authentication-Results'")[2]
    header = header.replace("\n", " ")
    return {selector: result for result, _alg, selector in _RESULT.findall(header)}


def dkimpy_results(message: bytes, nameserver: str) -> dict[str, bool]:
    """{selector: verified} for each DKIM signature, by dkimpy, keys from the test DNS server
    ("127.0.0.1:port")."""
    host, _, port = nameserver.rpartition(":")

    def txt(name: bytes, timeout: int = 5) -> bytes | None:
        query = dns.message.make_query(name.decode(), dns.rdatatype.TXT)
        answer = dns.query.udp(query, host, port=int(port), timeout=timeout)
        for rrset in answer.answer:
            for rdata in rrset:
                return b"".join(rdata.strings)
        return None

    checker = dkim.DKIM(message)
    count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    results = {}
    for i in range(count):
        try:
            verified = bool(checker.verify(idx=i, dnsfunc=txt))
        except dkim.DKIMException:  # dkimpy raises for some failures (a body hash mismatch)
            verified = False
        results[checker.selector.decode()] = verified
    return results
