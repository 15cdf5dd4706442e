"""How long rewriting a typical newsletter takes: 30 KB of quoted-printable HTML, 40 links, in
multipart/alternative with its text part. Wall time, marked integration; run with -s to see it."""

from __future__ import annotations

import quopri
import statistics
import time

import pytest

from mailsluice.tracking import rewrite

pytestmark = pytest.mark.integration

LINKS = 40
SIZE = 30_000
# Generous: over a hundred times what one laptop core takes.
BUDGET_SECONDS = 0.2


def newsletter() -> bytes:
    rows = [
        f'<tr><td style="padding:8px;font-family:Arial"><a href="https://shop.test/p/{n}?utm_source'
        f'=news&amp;utm_medium=email">Product {n} \u2014 caf\u00e9</a><p>' + "Lorem ipsum " * 40
        for n in range(LINKS)
    ]
    html = "<html><head><style>td{color:#333}</style></head><body><table>"
    html += "</p></td></tr>\r\n".join(rows) + "</p></td></tr></table>\r\n"
    html += " " * max(0, SIZE - len(html) - 15) + "</body></html>\r\n"
    body = quopri.encodestring(html.encode("utf-8")).replace(b"\n", b"\r\n")
    head = (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n--b\r\n"
        b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
    )
    return head + b"\r\n\r\n" + body + b"\r\n--b--\r\n"


def test_a_30_kb_newsletter_with_40_links_is_rewritten_within_milliseconds() -> None:
    message = newsletter()
    runs = []
    for _ in range(30):
        start = time.perf_counter()
        done = rewrite(message, lambda i, t: f"https://t.test/c/{'x' * 80}{i}", lambda: "https://t")
        runs.append(time.perf_counter() - start)
    assert len(done.links) == LINKS
    median = statistics.median(runs)
    print(f"\nrewrite: {len(message)} bytes, {LINKS} links: median {median * 1000:.2f} ms")
    assert median < BUDGET_SECONDS
