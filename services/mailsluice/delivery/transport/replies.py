"""SMTP replies of the delivery transport: the local outcomes it reports when the remote said
nothing usable, and the reading of a remote reply's enhanced status code (RFC 3463, RFC 2034)."""

from __future__ import annotations

import re

# Local outcomes, as (code, enhanced, text).
S451_CONNECT_FAILED = (451, "4.4.1", "Could not connect to any mail server of the destination")
S451_DROPPED = (451, "4.4.2", "Connection dropped by the remote server")
S451_TIMEOUT = (451, "4.4.2", "Timed out waiting for the remote server")
S451_TLS_NOT_OFFERED = (451, "4.7.4", "TLS is required but the remote server did not offer it")
S451_TLS_FAILED = (451, "4.7.5", "TLS negotiation with the remote server failed")
S451_LOCAL_ERROR = (451, "4.3.0", "Local error in the delivery transport")
S552_TOO_BIG = (552, "5.3.4", "Message is larger than the remote server accepts")
S553_BAD_ADDRESS = (553, "5.1.3", "Address cannot be sent: control characters or spaces")
S553_NEEDS_SMTPUTF8 = (553, "5.6.7", "Non-ASCII address and the remote lacks SMTPUTF8")

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


def with_detail(reply: tuple[int, str, str], detail: str = "") -> tuple[int, str, str]:
    """A local reply with what went wrong appended to its text."""
    code, enhanced, text = reply
    return code, enhanced, f"{text}: {detail}" if detail else text


def split_reply(code: int, message: str) -> tuple[str, str]:
    """A remote reply's enhanced status code (RFC 2034) and text; the enhanced code is derived
    from the reply class when the server sent none."""
    text = " ".join(message.split())
    match = _ENHANCED.match(text)
    if match and match.group(1) == str(code)[0]:
        return ".".join(match.groups()), text[match.end() :]
    klass = str(code)[0] if str(code)[0] in "245" else "4"
    return f"{klass}.0.0", text
