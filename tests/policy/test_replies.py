"""Reply classification: the canonical provider texts, every shipped rule's examples, the
enhanced-code fallback, precedence, phases and the bounce flag."""

from __future__ import annotations

import pytest

from mailsluice.delivery.transport.replies import split_reply
from mailsluice.policy.replies import (
    Classified,
    ReplyClass,
    classify,
    default_replies,
    example_phase,
    load_replies_text,
    normalize_text,
    parse_example,
)
from mailsluice.policy.shaping import default_policy

IP = "127.0.0.21"
C = ReplyClass

# (class, bounce, reply as the server sends it, phase, provider): the spec's canonical texts.
CANONICAL = [
    (C.RATE, False, "450 4.2.1 rate limit exceeded, slow down", "rcpt", None),
    (
        C.RATE,
        False,
        f"451 4.7.500 Server busy. Please try again later from [{IP}]. (AS761)",
        "rcpt",
        "microsoft",
    ),
    (C.RATE, False, "421 4.7.0 Try again later, closing connection.", "rcpt", "google"),
    (
        C.REPUTATION,
        False,
        f"421 4.7.28 [{IP}] Our system has detected an unusual rate of unsolicited mail "
        "originating from your IP address. To protect our users from spam, mail sent from your "
        "IP address has been temporarily rate limited. Please visit "
        "https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our Bulk Email "
        "Senders Guidelines.",
        "rcpt",
        "google",
    ),
    (
        C.REPUTATION,
        False,
        f"421 4.7.0 [TSS04] Messages from {IP} temporarily deferred due to unexpected volume or "
        "user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        "rcpt",
        "yahoo",
    ),
    (
        C.REPUTATION,
        False,
        f"451 4.7.650 The mail server [{IP}] has been temporarily rate limited due to IP "
        "reputation. For e-mail delivery information, see https://postmaster.live.com (S775)",
        "rcpt",
        "microsoft",
    ),
    (
        C.CONNECTIONS,
        False,
        "421 4.3.2 The maximum number of concurrent server connections has exceeded a limit, "
        "closing transmission channel",
        "greeting",
        "microsoft",
    ),
    (
        C.CONNECTIONS,
        False,
        "421 4.7.0 Too many concurrent SMTP connections from this IP address; please try again "
        "later.",
        "greeting",
        "google",
    ),
    (C.CONNECTIONS, False, "421 4.7.0 too many connections from your IP", "greeting", None),
    (C.PER_CONNECTION, False, "421 4.7.0 too many messages, reconnect", "mail", None),
    (
        C.PER_CONNECTION,
        False,
        "421 Max message per connection reached, closing transmission channel",
        "mail",
        "yahoo",
    ),
    (
        C.BLOCK,
        False,
        f"421 4.7.0 Your IP {IP} is temporarily blocked after repeated deferrals; try again later",
        "greeting",
        None,
    ),
    (
        C.BLOCK,
        False,
        f"550 5.7.1 Unfortunately, messages from [{IP}] weren't sent. Please contact your "
        "Internet service provider since part of their network is on our block list (S3150).",
        "rcpt",
        "microsoft",
    ),
    (
        C.BLOCK,
        True,
        f"421 4.7.0 [TSS09] All messages from {IP} will be permanently deferred; Retrying will "
        "NOT succeed. See https://postmaster.yahooinc.com/error-codes",
        "rcpt",
        "yahoo",
    ),
    (
        C.RECIPIENT,
        False,
        "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents "
        "additional messages from being delivered. Please resend your message at a later time.",
        "rcpt",
        "google",
    ),
    (
        C.RECIPIENT,
        False,
        "452 4.2.2 The email account that you tried to reach is over quota.",
        "rcpt",
        "google",
    ),
    (
        C.RECIPIENT,
        False,
        "550 5.1.1 The email account that you tried to reach does not exist.",
        "rcpt",
        "google",
    ),
    (
        C.SERVER,
        False,
        "421 4.3.2 Service not available, closing transmission channel",
        "greeting",
        None,
    ),
    (C.SERVER, False, "451 4.3.0 Temporary local problem - please try later", "data", None),
]


def remote(raw: str) -> tuple[int, str, str]:
    """(code, enhanced, text) as the transport reports a remote reply."""
    code = int(raw[:3])
    return (code, *split_reply(code, raw[4:]))


@pytest.mark.parametrize(
    ("cls", "bounce", "raw", "phase", "provider"),
    CANONICAL,
    ids=[f"{c.value}-{raw[:30]}" for c, _b, raw, _p, _v in CANONICAL],
)
def test_canonical_reply_classifies_as_specified(cls, bounce, raw, phase, provider):
    got = classify(*remote(raw), phase=phase, provider=provider)
    assert (got.cls, got.bounce) == (cls, bounce), got


# Small-ISP and generic texts do not depend on knowing the provider.
@pytest.mark.parametrize(
    ("cls", "raw", "phase"), [(c, raw, ph) for c, _b, raw, ph, prov in CANONICAL if prov is None]
)
def test_generic_canonical_texts_classify_for_any_provider(cls, raw, phase):
    for provider in ("google", "yahoo", "microsoft", "acme"):
        assert classify(*remote(raw), phase=phase, provider=provider).cls == cls


EXAMPLES = [(rule, raw) for rule in default_replies() for raw in rule.examples]


@pytest.mark.parametrize(
    ("rule", "raw"), EXAMPLES, ids=[f"{r.name}-{i}" for i, (r, _x) in enumerate(EXAMPLES)]
)
def test_every_shipped_example_classifies_to_its_rule(rule, raw):
    code, enhanced, text = remote(raw)
    provider = None if rule.provider == "*" else rule.provider
    got = classify(code, enhanced, text, phase=example_phase(rule), provider=provider)
    assert got == Classified(rule.cls, rule.name, rule.bounce)


@pytest.mark.parametrize(("rule", "raw"), EXAMPLES, ids=[r.name for r, _x in EXAMPLES])
def test_example_parsing_agrees_with_the_transport(rule, raw):
    code, enhanced, text = remote(raw)
    parsed = parse_example(raw)
    assert parsed is not None
    assert parsed[:2] == (code, enhanced)
    assert normalize_text(code, enhanced, parsed[2]) == normalize_text(code, enhanced, text)


def test_shipped_pack_rules_carry_examples_and_known_providers():
    providers = set(default_policy().model.provider)
    for rule in default_replies():
        assert rule.examples, f"{rule.name} has no example"
        assert rule.provider == "*" or rule.provider in providers, rule.name
        # No durations in the pack: none of its texts names its own.
        assert rule.min_block is None, rule.name
    assert {r.cls for r in default_replies()} == set(ReplyClass) - {ReplyClass.SUCCESS}


# Texts close to a rule's that must not be taken by it: (reply, phase, provider, class, rule).
NEAR_MISSES = [
    (
        "452 4.2.2 Mailbox full: too many messages in the mailbox",
        "rcpt",
        None,
        C.RECIPIENT,
        "code:4.2",
    ),
    ("550 5.7.1 Too many concurrent SMTP connections", "greeting", None, C.BLOCK, "code:550"),
    (
        "451 4.7.500 Server busy. Please try again later. (AS763)",
        "rcpt",
        None,
        C.REPUTATION,
        "code:4.7",
    ),
    (
        f"421 4.7.0 [TSS01] Messages from {IP} temporarily deferred; retrying will succeed later",
        "rcpt",
        "yahoo",
        C.REPUTATION,
        "any-messages-from-ip-temporarily-deferred",
    ),
    (
        "421-4.7.28 Gmail has detected an unusual rate of unsolicited mail originating\n"
        "421 4.7.28 from your DKIM domain [example.net       30]. - gsmtp",
        "data",
        "google",
        C.REPUTATION,
        "google-unsolicited-mail-rate-from-domain",
    ),
    ("421 4.7.28 Comcast rate limited. RL000010", "rcpt", "google", C.REPUTATION, "code:4.7"),
]


@pytest.mark.parametrize(("raw", "phase", "provider", "cls", "rule"), NEAR_MISSES)
def test_near_misses_are_not_taken_by_the_wrong_rule(raw, phase, provider, cls, rule):
    lines = raw.split("\n")
    code = int(lines[0][:3])
    got = classify(
        code, *split_reply(code, " ".join(x[4:] for x in lines)), phase=phase, provider=provider
    )
    assert (got.cls, got.rule) == (cls, rule)


# (code, enhanced, phase, class, rule) with no rules at all: the fallback table.
FALLBACK = [
    (250, "2.0.0", "data", C.SUCCESS, "success"),
    (220, "2.0.0", "greeting", C.SUCCESS, "success"),
    (550, "5.7.1", "greeting", C.BLOCK, "code:550"),
    (554, "5.0.0", "ehlo", C.BLOCK, "code:554"),
    (550, "5.7.1", "connect", C.RECIPIENT, "code:550"),
    (550, "5.7.1", "mail", C.RECIPIENT, "code:550"),
    (550, "5.1.1", "rcpt", C.RECIPIENT, "code:550"),
    (554, "5.7.1", "data", C.RECIPIENT, "code:554"),
    (451, "4.7.1", "rcpt", C.REPUTATION, "code:4.7"),
    (421, "4.7.0", "greeting", C.REPUTATION, "code:4.7"),
    (450, "4.1.1", "rcpt", C.RECIPIENT, "code:4.1"),
    (452, "4.2.2", "rcpt", C.RECIPIENT, "code:4.2"),
    (451, "4.5.0", "data", C.RECIPIENT, "code:4.5"),
    (451, "4.6.0", "data", C.RECIPIENT, "code:4.6"),
    (451, "4.3.0", "data", C.SERVER, "code:4.3"),
    (451, "4.4.1", "connect", C.SERVER, "code:4.4"),
    (421, "4.0.0", "greeting", C.SERVER, "code:421"),
    (450, "", "rcpt", C.SERVER, "code:450"),
    (451, "4.0.5", "rcpt", C.SERVER, "code:4.0"),
    (451, "4.9.1", "rcpt", C.SERVER, "code:4.9"),
    (354, "", "data", C.SERVER, "code:354"),
    (0, "", "connect", C.SERVER, "code:0"),
]


@pytest.mark.parametrize(("code", "enhanced", "phase", "cls", "rule"), FALLBACK)
def test_fallback_on_codes_and_phase(code, enhanced, phase, cls, rule):
    assert classify(code, enhanced, "", phase=phase, provider=None, rules=[]) == Classified(
        cls, rule
    )


def test_a_success_is_never_matched_against_rules():
    text = "2.0.0 Ok, but too many connections from your IP"
    assert classify(250, "2.0.0", text, phase="data", provider=None).cls is C.SUCCESS


PRECEDENCE = """
[[rule]]
name = "generic-first"
text = "slow"
class = "rate"

[[rule]]
name = "generic-second"
text = "slow down"
class = "server"

[[rule]]
name = "acme-own"
provider = "acme"
text = "slow down"
class = "reputation"
bounce = true

[[rule]]
name = "greeting-only"
text = "go away"
phase = ["greeting", "ehlo"]
class = "block"
"""


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("acme", Classified(C.REPUTATION, "acme-own", bounce=True)),
        (None, Classified(C.RATE, "generic-first")),
        ("*", Classified(C.RATE, "generic-first")),
        ("other", Classified(C.RATE, "generic-first")),
    ],
)
def test_provider_rules_come_before_generic_ones_then_file_order(provider, expected):
    rules = load_replies_text(PRECEDENCE)
    assert (
        classify(421, "4.7.0", "please slow down", phase="rcpt", provider=provider, rules=rules)
        == expected
    )


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("greeting", Classified(C.BLOCK, "greeting-only")),
        ("ehlo", Classified(C.BLOCK, "greeting-only")),
        ("mail", Classified(C.SERVER, "code:4.3")),
        ("rcpt", Classified(C.SERVER, "code:4.3")),
    ],
)
def test_phase_restricted_rule_matches_only_there(phase, expected):
    rules = load_replies_text(PRECEDENCE)
    assert classify(421, "4.3.0", "Go away", phase=phase, provider=None, rules=rules) == expected


def test_bounce_only_where_the_rule_says_so():
    tss09 = remote(
        f"421 4.7.0 [TSS09] All messages from {IP} will be permanently deferred; Retrying will "
        "NOT succeed."
    )
    assert classify(*tss09, phase="rcpt", provider="yahoo").bounce
    assert classify(*tss09, phase="rcpt", provider=None).bounce
    tss04 = remote(f"421 4.7.0 [TSS04] Messages from {IP} temporarily deferred")
    assert not classify(*tss04, phase="rcpt", provider="yahoo").bounce
    assert not classify(421, "4.7.0", "", phase="rcpt", provider=None).bounce


def test_patterns_match_across_the_lines_of_a_multi_line_reply():
    rules = load_replies_text(
        '[[rule]]\nname = "x"\ntext = "rate of unsolicited"\nclass = "rate"\n'
    )
    text = "4.7.28 unusual rate of\n421-4.7.28 unsolicited mail"
    assert classify(421, "4.7.28", text, phase="rcpt", provider=None, rules=rules).rule == "x"


def test_default_rules_are_the_shipped_pack():
    raw = remote("421 4.7.0 too many messages, reconnect")
    assert classify(*raw, phase="mail", provider=None) == classify(
        *raw, phase="mail", provider=None, rules=default_replies()
    )
    assert default_replies() is default_replies()


def test_normalize_text_removes_repeated_prefixes_only():
    assert normalize_text(421, "4.7.28", "a\n421-4.7.28 b 4.7.28 c") == "a b c"
    assert (
        normalize_text(421, "4.7.0", "keep 4.7.28 and 1421 intact") == "keep 4.7.28 and 1421 intact"
    )


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("421 4.7.0 too many", (421, "4.7.0", "too many")),
        ("421-4.7.28 a 421-4.7.28 b", (421, "4.7.28", "a 421-4.7.28 b")),
        ("421 Max message", (421, "4.0.0", "Max message")),
        ("550 4.7.1 mismatched class", (550, "5.0.0", "4.7.1 mismatched class")),
        ("451", (451, "4.0.0", "")),
        ("4.7.0 no code", None),
        ("4211 long code", None),
        ("650 6.0.0 no such class", None),
    ],
)
def test_parse_example(raw, parsed):
    assert parse_example(raw) == parsed
