"""The protocol policy Mailsluice adds to aiosmtpd's RFC 5321 state machine, as plain decisions
over plain state: no sockets, no aiosmtpd. session.py applies them from aiosmtpd's extension
points; everything else is aiosmtpd's own.

- Replies carry RFC 3463 enhanced codes: aiosmtpd's own are rewritten (replies.rewrite).
- Any 421 reply closes the connection. Protocol errors (replies.ERROR_CODES) are counted; at
  `max_errors` the client gets 421 4.7.0 and is disconnected. At most `max_messages` messages
  per connection (421 4.7.0 at the next MAIL).
- An idle timeout (aiosmtpd's own timer) and a total session timeout, both announced with
  421 4.4.2 before the connection closes.
- A greeting pause: a client that talks before the 220 greeting is an early talker and gets
  554 5.5.0. Commands sent after EHLO, HELO, STARTTLS, AUTH (its SASL responses included) or
  DATA in the same packet get 554 5.5.0 too (RFC 2920 §3.1, RFC 4954 §4; after STARTTLS it is
  the command-injection class, plaintext read as if it came over TLS); so does any command
  sent before the previous reply when PIPELINING was not advertised (before EHLO, after HELO).
  The connection closes, like Postfix's smtpd_forbid_unauth_pipelining.
- Unknown commands get 500 5.5.2 and count toward `max_errors` (aiosmtpd's own limit of five
  is lifted); replies never echo control characters. EHLO/HELO names with control characters
  get 501 5.5.2, a second STARTTLS inside TLS 503 5.5.1.
- Command line limits stay fixed: aiosmtpd would grow them on every EHLO.
- Strict address parsing (addresses.parse_path) before aiosmtpd's lenient one, and the relay
  check (trusted network or authenticated) before MAIL and RCPT. The one exception: RCPT to a
  feedback-loop address is local delivery, open to any client (so MAIL is too when such
  addresses are configured); so is RCPT to an unsubscribe+TOKEN address of the configured
  unsubscribe domain; every other recipient of a stranger still gets 530.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mailsluice.consent.tokens import mailto_token
from mailsluice.ingest import replies
from mailsluice.ingest.addresses import AddressError, parse_path

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Commands whose reply a client must wait for before it sends anything else, even with
# PIPELINING (AUTH: RFC 4954 §4, Postfix's smtpd_forbid_unauth_pipelining).
SYNC_COMMANDS = frozenset({"EHLO", "HELO", "STARTTLS", "AUTH", "DATA"})


@dataclass(frozen=True)
class SessionLimits:
    max_messages: int
    max_errors: int
    session_timeout_s: float
    greet_pause_s: float
    trusted_networks: tuple[Network, ...]
    feedback_addresses: frozenset[str] = frozenset()  # lower-cased
    unsubscribe_domain: str = ""  # of unsubscribe+TOKEN addresses, lower-cased ("": none)


@dataclass
class ConnState:
    """What the policy keeps per connection."""

    trusted_network: str = ""  # the trusted network the peer is in, "" if none
    peer_ip: str = ""
    messages: int = 0
    errors: int = 0
    closing: bool = False


@dataclass(frozen=True)
class Refusal:
    """A command refused before aiosmtpd sees it."""

    reply: str
    violation: str = ""  # a protocol violation kind to count (metrics VIOLATION_KINDS)
    reason: str = ""  # a recipient reject reason: the refusal is also a rejection event
    recipient: str = ""


@dataclass(frozen=True)
class AfterReply:
    """What a reply just sent means for the connection."""

    close: bool = False
    then: str = ""  # a further reply to send
    violation: str = ""  # a protocol violation kind to count
    transaction: str = ""  # a transaction result to count


def trusted_network_of(ip: str, networks: tuple[Network, ...]) -> str:
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for network in networks:
        if address.version == network.version and address in network:
            return str(network)
    return ""


def early_talker(pending_input: bool) -> Refusal | None:
    """After the greeting pause, before the 220: has the client spoken first?"""
    return Refusal(replies.S554_PIPELINING, violation="early_talker") if pending_input else None


def out_of_sync(command: str, pending_input: bool, *, pipelining: bool = True) -> Refusal | None:
    """Before a command runs: did the client send more after one it must wait on? Without
    `pipelining` (PIPELINING not advertised: before EHLO, after HELO) it must wait on every
    command."""
    if pending_input and (command in SYNC_COMMANDS or not pipelining):
        return Refusal(replies.S554_PIPELINING, violation="pipelining")
    return None


def check_helo(command: str, hostname: str | None) -> Refusal | None:
    """EHLO/HELO: a name with control characters (NUL, ESC, bare CR...) is no host name; it
    would reach logs and the Received header. A missing name is aiosmtpd's 501."""
    if hostname and any(ord(c) < 32 or ord(c) == 127 for c in hostname):
        return Refusal(replies.S501_BAD_HELO.format(command=command))
    return None


def check_starttls(tls_active: bool) -> Refusal | None:
    """STARTTLS inside TLS: aiosmtpd would answer 220 and wrap TLS in TLS."""
    return Refusal(replies.S503_TLS_ACTIVE) if tls_active else None


def after_reply(reply: str, conn: ConnState, limits: SessionLimits) -> AfterReply:
    """The consequences of a reply once sent; protocol errors are counted in `conn`."""
    code, final = reply[:3], reply[3:4] != "-"
    if not final:
        return AfterReply()
    if code == "421":
        return AfterReply(close=True)
    if code in replies.ERROR_CODES:
        conn.errors += 1
        if conn.errors >= limits.max_errors:
            return AfterReply(then=replies.S421_TOO_MANY_ERRORS, violation="too_many_errors")
        return AfterReply()
    if reply == replies.S552_TOO_BIG:
        return AfterReply(transaction="too_big")
    return AfterReply()


def strip_keyword(keyword: str, arg: str | None) -> str | None:
    """The path argument after `FROM:` / `TO:` (any case), None when the keyword is missing."""
    if not arg or arg[: len(keyword)].upper() != keyword:
        return None
    return arg[len(keyword) :].strip()


def is_feedback_path(path_arg: str | None, feedback_addresses: frozenset[str]) -> bool:
    """RCPT TO one of the feedback-loop addresses (strictly parsed)."""
    if not path_arg or not feedback_addresses:
        return False
    try:
        address = parse_path(path_arg).address
    except AddressError:
        return False
    return address.lower() in feedback_addresses


def is_unsubscribe_path(path_arg: str | None, domain: str) -> bool:
    """RCPT TO an unsubscribe+TOKEN address of ours (the token is judged later, at RCPT)."""
    if not path_arg or not domain:
        return False
    try:
        address = parse_path(path_arg).address
    except AddressError:
        return False
    return mailto_token(address, domain) is not None


def check_mail(
    arg: str | None,
    conn: ConnState,
    limits: SessionLimits,
    *,
    relay_allowed: bool,
    draining: bool,
) -> Refusal | None:
    """MAIL after HELO outside a transaction (aiosmtpd answers the other cases itself)."""
    if draining:
        return Refusal(replies.S421_SHUTTING_DOWN)
    # With feedback addresses any client may start a transaction; RCPT then decides.
    if not relay_allowed and not (limits.feedback_addresses or limits.unsubscribe_domain):
        return Refusal(replies.S530_AUTH_REQUIRED)
    if conn.messages >= limits.max_messages:
        return Refusal(replies.S421_TOO_MANY_MESSAGES, violation="too_many_messages")
    path_arg = strip_keyword("FROM:", arg)
    if path_arg is not None:
        try:
            parse_path(path_arg, allow_null=True)
        except AddressError:
            return Refusal(replies.S501_BAD_SENDER)
    return None


def check_rcpt(arg: str | None, limits: SessionLimits, *, relay_allowed: bool) -> Refusal | None:
    """RCPT after HELO inside a transaction (aiosmtpd answers the other cases itself)."""
    path_arg = strip_keyword("TO:", arg)
    local = is_feedback_path(path_arg, limits.feedback_addresses) or is_unsubscribe_path(
        path_arg, limits.unsubscribe_domain
    )
    if not relay_allowed and not local:
        return Refusal(replies.S530_AUTH_REQUIRED)
    if path_arg is None:
        return None
    try:
        parse_path(path_arg)
    except AddressError as exc:
        if exc.kind == "relay_trick":
            return Refusal(replies.S554_RELAY_DENIED, reason="relay_denied", recipient=path_arg)
        return Refusal(replies.S501_BAD_RECIPIENT, reason="syntax", recipient=path_arg)
    return None
