"""ARF (RFC 5965) feedback reports -> complaints: table-driven over hand-written reports shaped
like Yahoo's, Microsoft's, AOL's and Fastmail's, plus what must be refused; the X-Mailsluice-Id
stamp that lets a complaint find its message; complaint events."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mailsluice.contracts.events import EventType
from mailsluice.ingest import replies
from mailsluice.ingest.feedback import (
    Complaint,
    FeedbackError,
    complaint_events,
    parse_report,
)
from mailsluice.ingest.message import Trace, prepare_message
from mailsluice.ingest.plan import UNWRITTEN, Count, Plan, Transaction, plan_feedback
from mailsluice.ingest.replies import FEEDBACK_REJECTS
from mailsluice.metrics.ingest import FEEDBACK_REJECT_REASONS
from mailsluice.policy.rollup import load_rollup

QID = "01JDQ8Z5K3M4N5P6Q7R8S9T0VW"
OUR_RECEIVED = (
    "Received: from app.client.test ([192.0.2.7])\r\n"
    f"\tby mx.sender.test (Mailsluice) with ESMTP id {QID}\r\n"
    "\tfor <{rcpt}>; Thu, 26 Nov 2026 06:00:00 +0000\r\n"
)


def report(
    fields: str,
    original: str = "",
    *,
    original_type: str = "message/rfc822",
    report_type: str = "feedback-report",
    extra_part_headers: str = "",
) -> bytes:
    """A multipart/report as providers send it: human part, machine part, original."""
    parts = [
        "--XX\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        "This is an email abuse report for an email message received.\r\n",
        f"--XX\r\nContent-Type: message/feedback-report\r\n\r\n{fields}\r\n",
    ]
    if original:
        parts.append(f"--XX\r\nContent-Type: {original_type}\r\n{extra_part_headers}\r\n{original}")
    return (
        "From: feedback@provider.test\r\n"
        "To: fbl@mail.sender.test\r\n"
        "Subject: FW: Abuse report\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type={report_type}; boundary="XX"\r\n'
        "\r\n" + "".join(parts) + "--XX--\r\n"
    ).encode()


def original_message(rcpt: str, to: str | None = None, stamp: str | None = None) -> str:
    header = OUR_RECEIVED.format(rcpt=rcpt)
    if stamp is not None:
        header += f"X-Mailsluice-Id: {stamp}\r\n"
    return (
        header + "From: News <news@sender.test>\r\n"
        f"To: {to if to is not None else rcpt}\r\n"
        "Subject: Our offers\r\n"
        f"Message-ID: <{QID}@mx.sender.test>\r\n"
        "\r\n"
        "Buy now.\r\n"
    )


YAHOO = report(
    "Feedback-Type: abuse\r\n"
    "User-Agent: Yahoo!-Mail-Feedback/2.0\r\n"
    "Version: 0.1\r\n"
    "Original-Mail-From: <bounces@sender.test>\r\n"
    "Original-Rcpt-To: alice@yahoo.com\r\n"
    "Received-Date: Thu, 26 Nov 2026 06:00:05 +0000\r\n"
    "Arrival-Date: Thu, 26 Nov 2026 06:00:05 +0000\r\n"
    "Reported-Domain: sender.test\r\n"
    "Authentication-Results: mta1000.mail.yahoo.com; dkim=pass header.i=@sender.test\r\n",
    original_message("alice@yahoo.com", stamp=f"{QID}; pool=bulk"),
)
MICROSOFT = report(
    "Feedback-Type: abuse\r\n"
    "User-Agent: Microsoft Junk Mail Reporting Program\r\n"
    "Version: 1\r\n"
    "Reporting-MTA: dns; hotmail.com\r\n"
    "Source-IP: 192.0.2.7\r\n"
    "Original-Mail-From: bounces@sender.test\r\n"
    "Arrival-Date: Thu, 26 Nov 2026 06:00:05 +0000\r\n",
    # No Original-Rcpt-To: the To: of the attached message names the recipient.
    original_message("bob@outlook.com", stamp=f"{QID}; pool=default").replace(
        "\tfor <bob@outlook.com>;", "\t;"
    ),
)
AOL = report(
    "Feedback-Type: abuse\r\n"
    "User-Agent: AOL SComp\r\n"
    "Version: 0.1\r\n"
    "Original-Rcpt-To: redacted@aol.com\r\n",
    # Header only, the recipient redacted; our Received header still names it, and gives the
    # queue id (no X-Mailsluice-Id: mail queued before the stamp existed).
    original_message("carol@aol.com", to="redacted@aol.com").split("\r\n\r\n")[0] + "\r\n",
    original_type="text/rfc822-headers",
)
FASTMAIL = report(
    "Feedback-Type: abuse\r\n"
    "User-Agent: Fastmail-FBL/1.0\r\n"
    "Version: 1\r\n"
    "Original-Mail-From: <>\r\n"
    "Original-Rcpt-To: <dan@fastmail.com>\r\n"
    "Original-Rcpt-To: rfc822;Erin@FastMail.com\r\n"
    "Original-Rcpt-To: dan@fastmail.com\r\n",
    "X-Mailsluice-Id: " + QID.lower() + "; pool=transactional\r\nSubject: x\r\n",
    original_type="text/rfc822-headers",
    extra_part_headers="Content-Transfer-Encoding: 7bit\r\n",
)
NO_ORIGINAL = report("Feedback-Type: fraud\r\nOriginal-Rcpt-To: frank@comcast.net\r\n")

PLAIN = b"From: someone@provider.test\r\nTo: fbl@mail.sender.test\r\nSubject: hi\r\n\r\nspam!\r\n"
DSN = report("Reporting-MTA: dns; mx.test\r\n", report_type="delivery-status")
NO_TYPE = report("User-Agent: x\r\nOriginal-Rcpt-To: a@b.test\r\n")
NOT_SPAM = report("Feedback-Type: not-spam\r\nOriginal-Rcpt-To: a@b.test\r\n")
AUTH_FAILURE = report("Feedback-Type: auth-failure\r\nOriginal-Rcpt-To: a@b.test\r\n")
NO_RECIPIENT = report(
    "Feedback-Type: abuse\r\nOriginal-Rcpt-To: xxxxxxxx@outlook.com\r\n",
    # To: names two addresses and our Received names none: nobody to pin the complaint on.
    original_message("a@b.test", to="a@b.test, c@d.test").replace("\tfor <a@b.test>;", "\t;"),
)
NO_FEEDBACK_PART = (
    b"Content-Type: multipart/report; report-type=feedback-report; boundary=XX\r\n\r\n"
    b"--XX\r\nContent-Type: text/plain\r\n\r\nreport\r\n--XX--\r\n"
)


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    expected: list[Complaint] | str  # complaints, or the reject reason


ARRIVAL = 1795672805.0  # Thu, 26 Nov 2026 06:00:05 +0000

CASES = [
    Case(
        "yahoo",
        YAHOO,
        [
            Complaint(
                "alice@yahoo.com",
                "abuse",
                QID,
                "bulk",
                "bounces@sender.test",
                ARRIVAL,
                "",
                "Yahoo!-Mail-Feedback/2.0",
            )
        ],
    ),
    Case(
        "microsoft, no Original-Rcpt-To: To: of the original",
        MICROSOFT,
        [
            Complaint(
                "bob@outlook.com",
                "abuse",
                QID,
                "default",
                "bounces@sender.test",
                ARRIVAL,
                "hotmail.com",
                "Microsoft Junk Mail Reporting Program",
            )
        ],
    ),
    Case(
        "aol, text/rfc822-headers only, redacted: our Received names the recipient",
        AOL,
        [Complaint("carol@aol.com", "abuse", QID, "", user_agent="AOL SComp")],
    ),
    Case(
        "fastmail, several recipients once each, text/rfc822-headers",
        FASTMAIL,
        [
            Complaint(
                "dan@fastmail.com", "abuse", QID, "transactional", "", None, "", "Fastmail-FBL/1.0"
            ),
            Complaint(
                "Erin@fastmail.com", "abuse", QID, "transactional", "", None, "", "Fastmail-FBL/1.0"
            ),
        ],
    ),
    Case("no original attached", NO_ORIGINAL, [Complaint("frank@comcast.net", "fraud")]),
    Case("not a report", PLAIN, "not_report"),
    Case("a delivery status notification", DSN, "not_report"),
    Case("no Feedback-Type", NO_TYPE, "malformed"),
    Case("no message/feedback-report part", NO_FEEDBACK_PART, "malformed"),
    Case("not-spam is no complaint", NOT_SPAM, "not_complaint"),
    Case("auth-failure is no complaint", AUTH_FAILURE, "not_complaint"),
    Case("no usable recipient", NO_RECIPIENT, "no_recipient"),
    Case("empty", b"", "not_report"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_parse_report(case: Case) -> None:
    if isinstance(case.expected, str):
        with pytest.raises(FeedbackError) as caught:
            parse_report(case.raw)
        assert caught.value.reason == case.expected
    else:
        assert parse_report(case.raw) == case.expected


def test_forged_stamp_with_a_bad_pool_keeps_the_queue_id_only() -> None:
    raw = report(
        "Feedback-Type: abuse\r\nOriginal-Rcpt-To: a@b.test\r\n",
        f"X-Mailsluice-Id: {QID}; pool=Not_A_Pool!\r\n\r\n",
        original_type="text/rfc822-headers",
    )
    [complaint] = parse_report(raw)
    assert (complaint.queue_id, complaint.pool) == (QID, "")


def test_every_reject_reason_has_a_550_reply() -> None:
    assert set(FEEDBACK_REJECTS) == set(FEEDBACK_REJECT_REASONS)
    for reply in FEEDBACK_REJECTS.values():
        assert reply.startswith("550 5.6.0 ")


def test_complaint_events_roll_up_the_provider_and_drop_unknown_pools() -> None:
    complaints = parse_report(YAHOO) + parse_report(FASTMAIL)
    events = complaint_events(
        complaints, rollup=load_rollup(), served_pools=frozenset({"bulk", "default"}), now=7.0
    )
    summary = [(e.type, e.recipient, e.queue_id, e.pool, e.routing_key, e.reason) for e in events]
    complaint = EventType.COMPLAINT
    assert summary == [
        (complaint, "alice@yahoo.com", QID, "bulk", "yahoo", "abuse"),
        (complaint, "dan@fastmail.com", QID, "", "fastmail.com", "abuse"),
        (complaint, "Erin@fastmail.com", QID, "", "fastmail.com", "abuse"),
    ]
    assert events[0].sender == "bounces@sender.test"
    assert events[0].text == "Yahoo!-Mail-Feedback/2.0"
    assert {e.ts for e in events} == {7.0}


TRACE = Trace(
    helo="client.example",
    peer_ip="127.0.0.1",
    hostname="mx.test",
    protocol="ESMTP",
    queue_id=QID,
    recipients=("a@x.example",),
    now=0.0,
)


def test_stamp_follows_our_received_and_a_clients_own_copy_goes() -> None:
    raw = b"X-Mailsluice-Id: 00000000000000000000000000; pool=evil\r\nSubject: hi\r\n\r\nbody\r\n"
    prepared = prepare_message(raw, TRACE, pool_header="X-Mailsluice-Pool")
    data = prepared.stamped(QID, "bulk")
    assert data.startswith(b"Received: from client.example ([127.0.0.1])\r\n")
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    assert head.count("X-Mailsluice-Id") == 1
    stamp = f"X-Mailsluice-Id: {QID}; pool=bulk"
    assert f" +0000\r\n{stamp}\r\nSubject: hi" in head  # right after Received
    # The round trip: a report quoting this header finds the message and its pool.
    quoted = report(
        "Feedback-Type: abuse\r\n",
        data.decode().split("\r\n\r\n")[0] + "\r\n",
        original_type="text/rfc822-headers",
    )
    assert parse_report(quoted) == [Complaint("a@x.example", "abuse", QID, "bulk")]


def _plan(raw: bytes) -> Plan:
    txn = Transaction(QID, 0.0, 0.0, feedback=["fbl@x.test"])
    return plan_feedback(txn, raw, rollup=load_rollup(), served_pools=frozenset({"bulk"}), now=9.0)


@pytest.mark.parametrize(
    ("raw", "reply", "complaints", "counts"),
    [
        (
            YAHOO,
            "250 2.0.0 Ok: 1 complaint(s) recorded",
            [("alice@yahoo.com", "bulk")],
            (Count("transactions", ("queued",)), Count("complaints", ("bulk", "yahoo"))),
        ),
        (
            FASTMAIL,
            "250 2.0.0 Ok: 2 complaint(s) recorded",
            [("dan@fastmail.com", ""), ("Erin@fastmail.com", "")],
            (
                Count("transactions", ("queued",)),
                Count("complaints", ("other", "other")),
                Count("complaints", ("other", "other")),
            ),
        ),
        (
            NOT_SPAM,
            replies.S550_FEEDBACK_NOT_COMPLAINT,
            [],
            (
                Count("transactions", ("rejected",)),
                Count("feedback_rejected", ("not_complaint",)),
            ),
        ),
    ],
    ids=["yahoo", "fastmail", "not-spam"],
)
def test_intake_plans(raw: bytes, reply: str, complaints: list, counts: tuple) -> None:
    """The complaints are written with acks before the 250 (never 250 without them: the
    publish step answers UNWRITTEN otherwise); a refused report writes nothing."""
    plan = _plan(raw)
    assert plan.outcome.reply == reply
    assert plan.outcome.counts == counts
    assert [(e.recipient, e.pool) for e in plan.events] == complaints
    assert all(e.type == EventType.COMPLAINT and e.ts == 9.0 for e in plan.events)
    assert plan.writes == bool(complaints)
    assert plan.outcome.events == ()  # nothing emitted without acks
    assert plan.unwritten == UNWRITTEN and plan.unwritten.reply.startswith("451 4.3.0 ")
    logged = [(n.text, n.queue_id, n.pool) for n in plan.outcome.notes]
    if complaints:
        keys = [e.routing_key for e in plan.events]
        assert logged == [
            (f"complaint (abuse) from {k}", QID, p)
            for k, (_, p) in zip(keys, complaints, strict=True)
        ]
    else:
        refused = "feedback report refused: not_complaint: feedback type not-spam"
        assert logged == [(refused, QID, None)]


def test_a_stamp_with_tenant_and_campaign_comes_back_on_the_complaint() -> None:
    # campaign stats count complaints by the campaign the quoted X-Mailsluice-Id names
    prepared = prepare_message(b"Subject: hi\r\n\r\nbody\r\n", TRACE, pool_header="X-Pool")
    data = prepared.stamped(QID, "bulk", tenant="acme", campaign="spring-sale")
    head = data.decode().split("\r\n\r\n")[0]
    assert f"X-Mailsluice-Id: {QID}; pool=bulk; tenant=acme; campaign=spring-sale\r\n" in head
    quoted = report("Feedback-Type: abuse\r\n", head + "\r\n", original_type="text/rfc822-headers")
    [complaint] = parse_report(quoted)
    assert (complaint.pool, complaint.tenant, complaint.campaign) == ("bulk", "acme", "spring-sale")
    [event] = complaint_events(
        [complaint], rollup=load_rollup(), served_pools=frozenset({"bulk"}), now=1.0
    )
    assert (event.tenant, event.campaign) == ("acme", "spring-sale")


def test_a_forged_tenant_or_campaign_that_is_no_name_is_dropped() -> None:
    raw = report(
        "Feedback-Type: abuse\r\nOriginal-Rcpt-To: a@b.test\r\n",
        f"X-Mailsluice-Id: {QID}; pool=bulk; tenant=no name; campaign=-x\r\n\r\n",
        original_type="text/rfc822-headers",
    )
    [complaint] = parse_report(raw)
    assert (complaint.queue_id, complaint.pool, complaint.tenant, complaint.campaign) == (
        QID,
        "bulk",
        "",
        "",
    )
