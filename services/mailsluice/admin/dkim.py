"""`mailsluice dkim keygen|check`: make a DKIM key and its DNS record; compare what DNS
publishes with the keys in use (MAILSLUICE_DKIM_*, through the resolver of MAILSLUICE_DNS_*).

`check` exits 1 when a selector that should be published (signing, scheduled ahead, or in its
grace period) has no TXT record or one with another key, so it can gate a rotation.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from mailsluice.config import load
from mailsluice.dkim.keys import ALGORITHMS, DkimKeyError, generate, key_file_name
from mailsluice.dkim.plan import ScheduleError
from mailsluice.dkim.settings import DkimSettings
from mailsluice.resolver import DnsSettings, make_resolver


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    keygen = sub.add_parser("keygen", help="write a private key and print its DNS TXT record")
    keygen.add_argument("domain", help="the signing domain (d=), e.g. example.com")
    keygen.add_argument("selector", help="the selector (s=): the DNS name <selector>._domainkey")
    keygen.add_argument(
        "--algorithm", choices=ALGORITHMS, default="rsa", help="key algorithm (default: rsa)"
    )
    keygen.add_argument("--out", default=".", help="directory for the key file (default: .)")
    check = sub.add_parser("check", help="compare the published DKIM records with the keys")
    check.add_argument("domain", help="the signing domain whose records to check")


def run(args: argparse.Namespace) -> int:
    if args.action == "keygen":
        return keygen(args.domain, args.selector, args.algorithm, Path(args.out))
    return asyncio.run(
        check(args.domain.lower().rstrip("."), load(DkimSettings), load(DnsSettings))
    )


def keygen(domain: str, selector: str, algorithm: str, out: Path) -> int:
    key = generate(domain, selector, "ed25519" if algorithm == "ed25519" else "rsa")
    path = out / key_file_name(key.domain, selector)
    if path.exists():
        print(f"{path} exists; not overwritten", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_bytes(key.private_pem())
    print(f"; private key written to {path}", file=sys.stderr)
    print(f"{key.record_name}. IN TXT {zone_text(key.dns_record())}")
    return 0


def zone_text(record: str) -> str:
    """A TXT value as zone-file strings of at most 255 characters (RSA-2048 needs two)."""
    return " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))


def record_key(txt: str) -> tuple[str, str]:
    """(k, p) of a DKIM key record, k defaulting to rsa; spaces inside p= are ignored."""
    tags = {}
    for item in txt.split(";"):
        name, _, value = item.partition("=")
        tags[name.strip()] = "".join(value.split())
    return tags.get("k", "rsa") or "rsa", tags.get("p", "")


async def lookup_txt(resolver: dns.asyncresolver.Resolver, name: str) -> list[str] | str:
    """The TXT strings at `name` (each record's strings joined), or the reason there are none."""
    try:
        answer = await resolver.resolve(name, dns.rdatatype.TXT, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return "no TXT record"
    except dns.exception.DNSException as exc:
        return f"lookup failed ({type(exc).__name__})"
    return [b"".join(r.strings).decode("ascii", "replace") for r in answer]


async def check(domain: str, settings: DkimSettings, dns_settings: DnsSettings) -> int:
    try:
        plan = settings.plan()
    except (OSError, DkimKeyError, ScheduleError) as exc:
        print(f"cannot load keys: {exc}", file=sys.stderr)
        return 2
    published = plan.published(domain, time.time()) if plan is not None else []
    if not published:
        print(f"{domain}: no DKIM key configured (MAILSLUICE_DKIM_KEYS_DIR)", file=sys.stderr)
        return 1
    resolver = make_resolver(dns_settings)
    failed = 0
    for item in published:
        key = item.key
        found = await lookup_txt(resolver, key.record_name)
        role = "signing" if item.signing else "published"
        if isinstance(found, str):
            status = f"MISSING: {found}"
        elif (key.algorithm, key.public_key_b64()) in {record_key(t) for t in found}:
            status = "ok"
        else:
            status = "MISMATCH: the published key is not the key in use"
        failed += status != "ok"
        print(f"{key.record_name} {key.algorithm} {role}: {status}")
    return 1 if failed else 0
