"""`make bench`, DKIM: what signing costs per 20 KB message, by key algorithm, against dkimpy's
own pure-Python signing (the peer).

Ours: `mailsluice.delivery.transport.signing.DkimSigner` as the transport calls it (line ends
normalised, From domain looked up, dkimpy canonicalisation and our body canonicalisation, the
signature made by `cryptography`), with an RSA-2048 key, an Ed25519 key, and both at once (what
a domain with both selectors costs). The peer: `dkim.sign` with the same RSA key, relaxed/relaxed.
Each figure is CPU time of this process (other load on the machine costs it little), the best
of ROUNDS rounds.
The message: 20 KB, a plain-text part and an indented HTML part, bare LF line ends as a
submitting client may send them. Prints a table; the last line is JSON. The budget (0.5 ms a
message) is reported, not enforced: the figures move with the machine's load.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))

import dkim

from mailsluice.contracts.envelope import Envelope
from mailsluice.delivery.transport.signing import DkimSigner
from mailsluice.dkim.keys import generate
from mailsluice.dkim.plan import SigningPlan

SIZE = 20 * 1024
BUDGET_MS = 0.5
ROUNDS = 5
PER_ROUND = 200
PEER_PER_ROUND = 20


def message(size: int = SIZE) -> bytes:
    head = (
        b"From: News <news@example.com>\nTo: reader@example.net\nSubject: This week\n"
        b"Date: Thu, 03 Dec 2026 12:00:00 +0000\nMessage-ID: <bench@example.com>\n"
        b"MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=b\n"
        b"List-Unsubscribe: <https://u.example.com/u/TOKEN>\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\n\n--b\n"
        b"Content-Type: text/plain; charset=utf-8\n\n"
    )
    text = b"Plain text of the newsletter, a line of about seventy-six characters wide.\n"
    html = b'    <tr>  <td class="cell">An indented cell of the HTML part</td>\t</tr>\n'
    body = b""
    while len(head) + len(body) < size // 2:
        body += text
    body += b"--b\nContent-Type: text/html; charset=utf-8\n\n"
    while len(head) + len(body) < size - 8:
        body += html
    return (head + body + b"--b--\n")[:size]


def best_ms(work: Callable[[], object], count: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.process_time()
        for _ in range(count):
            work()
        best = min(best, (time.process_time() - start) / count * 1000)
    return best


def main() -> int:
    data = message()
    env = Envelope(
        queue_id="b", pool="default", sender="news@example.com",
        recipients=("reader@example.net",), routing_key="example.net", received_at=time.time(),
    )  # fmt: skip
    rsa = generate("example.com", "r1", "rsa")
    ed = generate("example.com", "e1", "ed25519")
    figures: dict[str, float] = {}
    for name, keys in (("rsa", [rsa]), ("ed25519", [ed]), ("rsa+ed25519", [rsa, ed])):
        signer = DkimSigner(SigningPlan(keys))
        figures[name] = best_ms(lambda s=signer: s(env, data), PER_ROUND)  # type: ignore[misc]
    pem = rsa.private_pem()
    figures["dkimpy_rsa"] = best_ms(
        lambda: dkim.sign(data, b"r1", b"example.com", pem, canonicalize=(b"relaxed", b"relaxed")),
        PEER_PER_ROUND,
    )
    ratio = figures["dkimpy_rsa"] / figures["rsa"]
    print(f"DKIM signing, {len(data)} byte message, CPU ms per message, best of {ROUNDS} rounds")
    for name, value in figures.items():
        mark = "" if name.startswith("dkimpy") else ("  ok" if value <= BUDGET_MS else "  OVER")
        print(f"  {name:<12} {value:7.3f}{mark}")
    print(f"  budget {BUDGET_MS} ms; dkimpy pure-Python RSA / ours: {ratio:.1f}x")
    out = {f"dkim_{k.replace('+', '_')}_ms": round(v, 4) for k, v in figures.items()}
    print(json.dumps({**out, "dkim_peer_ratio": round(ratio, 2), "message_bytes": len(data)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
