"""Every SMTP reply delivery makes up itself, with RFC 3463 enhanced status codes; and the
reading of a remote reply's enhanced status code (RFC 2034).

A local reply stands in for the remote's when the remote said nothing usable (no route, no
connection, TLS, timeouts) or when the message never reached a remote (our own connection rate,
expiry while throttled). The worker treats it as a remote reply of the same code: 4xx retries,
5xx bounces; backoff rules match remote texts only, so local texts are worded apart from them.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Reply(NamedTuple):
    code: int
    enhanced: str
    text: str


# Routing (RFC 5321 §5.1; null MX: RFC 7505).
S450_DNS_TEMP = Reply(450, "4.4.3", "Temporary DNS failure looking up the recipient domain")
S550_NXDOMAIN = Reply(550, "5.1.2", "Recipient domain does not exist")
S550_MX_NOT_FOUND = Reply(550, "5.4.4", "No address found for any MX host of the domain")
S554_PRIVATE_DESTINATION = Reply(
    554, "5.4.4", "Refusing to deliver: MX resolves to a private, loopback or reserved address"
)
S556_NULL_MX = Reply(556, "5.1.10", "Recipient domain accepts no mail (null MX, RFC 7505)")

# Connections and the SMTP session.
S451_CONNECT_FAILED = Reply(451, "4.4.1", "Could not connect to any mail server of the destination")
S451_DROPPED = Reply(451, "4.4.2", "Connection dropped by the remote server")
S451_TIMEOUT = Reply(451, "4.4.2", "Timed out waiting for the remote server")
S451_TLS_NOT_OFFERED = Reply(451, "4.7.4", "TLS is required but the remote server did not offer it")
S451_TLS_FAILED = Reply(451, "4.7.5", "TLS negotiation with the remote server failed")
S451_LOCAL_ERROR = Reply(451, "4.3.0", "Local error in the delivery transport")
S552_TOO_BIG = Reply(552, "5.3.4", "Message is larger than the remote server accepts")
S553_BAD_ADDRESS = Reply(553, "5.1.3", "Address cannot be sent: control characters or spaces")
S553_NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address and the remote lacks SMTPUTF8")

# Our own shaping: no connection could be opened under the destination's connection rate (the
# worker queues the message again: it was no attempt), and a message throttled past its expiry
# (4.4.5: system congestion).
S451_CONNECTION_RATE = Reply(
    451,
    "4.4.5",
    "No new connection allowed yet by the destination's connection rate (local shaping)",
)
S451_THROTTLED_EXPIRED = Reply(451, "4.4.5", "destination throttled; message expired while waiting")

# The worker's stand-ins for a transport that misbehaved (a bug; retried, never lost): no result
# for a recipient, or an exception out of send().
S451_NO_RESULT = Reply(451, "4.3.0", "no result from transport")
S451_TRANSPORT_RAISED = Reply(451, "4.3.0", "internal error")

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


def with_detail(reply: Reply, detail: str = "") -> Reply:
    """A local reply with what went wrong appended to its text."""
    code, enhanced, text = reply
    return Reply(code, enhanced, f"{text}: {detail}" if detail else text)


def split_reply(code: int, message: str) -> tuple[str, str]:
    """A remote reply's enhanced status code (RFC 2034) and text; the enhanced code is derived
    from the reply class when the server sent none."""
    text = " ".join(message.split())
    match = _ENHANCED.match(text)
    if match and match.group(1) == str(code)[0]:
        return ".".join(match.groups()), text[match.end() :]
    klass = str(code)[0] if str(code)[0] in "245" else "4"
    return f"{klass}.0.0", text
