"""The suppression rules of the stream processors: bounce classes and decisions, table-driven;
no Kafka."""

from __future__ import annotations

import pytest

from mailsluice.contracts.events import Event, EventType
from mailsluice.engagement.policy import UNENGAGED
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.streams import Streams
from mailsluice.streams import rules
from mailsluice.streams.rules import Decision, Policy, SoftState, classify, decide

DAY = rules.DAY_S
T0 = 1_790_000_000.0  # a fixed instant; day_of(T0) is the "today" of these tests
D0 = rules.day_of(T0)
POLICY = Policy(threshold=5, window_days=30, count_deferrals=True)


@pytest.mark.parametrize(
    ("code", "enhanced", "text", "reason", "expected"),
    [
        # the recipient's address or domain is dead
        (550, "5.1.1", "The email account that you tried to reach does not exist", "", "hard"),
        (550, "5.1.2", "Recipient domain does not exist", "bounce", "hard"),
        (553, "5.1.3", "Address cannot be sent: control characters or spaces", "", "hard"),
        (556, "5.1.10", "Recipient domain accepts no mail (null MX, RFC 7505)", "", "hard"),
        (550, "5.2.1", "The email account that you tried to reach is disabled", "", "hard"),
        (550, "5.0.0", "<a@b.test>: Recipient address rejected: User unknown", "", "hard"),
        (550, "", "No such user here", "", "hard"),
        (550, "5.4.1", "Recipient address rejected: Access denied. AS(201806281)", "", "hard"),
        (550, "5.0.0", "", "bad-mailbox", "hard"),
        # policy: the sender's problem, never the recipient's
        (550, "5.7.1", "Message rejected: user unknown (policy)", "", "policy"),
        (554, "5.7.9", "Message not accepted for policy reasons", "", "policy"),
        (550, "5.7.606", "Access denied, banned sending IP", "", "policy"),
        (421, "4.7.0", "Try again later, closing connection (reputation)", "", "policy"),
        (550, "5.0.0", "Blocked - see https://www.spamhaus.org/query/ip/192.0.2.1", "", "policy"),
        (554, "", "Service unavailable; client host blocked using zen.spamhaus.org", "", "policy"),
        (550, "", "User unknown", "spam-related", "policy"),
        # mailbox trouble: counts as a soft failure
        (452, "4.2.2", "The email account that you tried to reach is over quota", "", "mailbox"),
        (552, "5.2.2", "Mailbox full", "", "mailbox"),
        (450, "4.1.1", "Recipient address rejected: User unknown in local table", "", "mailbox"),
        (452, "", "Mailbox is full, try again later", "", "mailbox"),
        (550, "5.0.0", "", "quota-issues", "mailbox"),
        # other: says nothing about the recipient
        (550, "5.1.8", "Sender address rejected: Domain not found", "", "other"),
        (550, "5.1.7", "Bad sender's mailbox address syntax", "", "other"),
        (552, "5.3.4", "Message is larger than the remote server accepts", "", "other"),
        (552, "5.2.3", "Message exceeds maximum size", "", "other"),
        (554, "5.4.4", "No address found for any MX host of the domain", "", "other"),
        (553, "5.6.7", "Non-ASCII address and the remote lacks SMTPUTF8", "", "other"),
        (451, "4.3.0", "no result from transport", "", "other"),
        (421, "4.4.2", "Connection timed out", "", "other"),
        (550, "5.0.0", "Requested action not taken: mailbox unavailable", "", "other"),
        (450, "", "User unknown", "", "other"),  # hard wording in a 4xx is not hard
    ],
)
def test_classify(code: int, enhanced: str, text: str, reason: str, expected: str) -> None:
    assert classify(code, enhanced, text, reason) == expected


def event(kind: EventType, *, days_ago: float = 0, **fields: object) -> Event:
    base: dict[str, object] = {"recipient": "rcpt@example.test", "pool": "default"}
    return Event(type=kind, ts=T0 - days_ago * DAY, **{**base, **fields})  # type: ignore[arg-type]


HARD = {"code": 550, "enhanced": "5.1.1", "text": "no such user", "reason": "bounce"}
POLICY_BLOCK = {"code": 550, "enhanced": "5.7.1", "text": "blocked for spam", "reason": "bounce"}
QUOTA = {"code": 452, "enhanced": "4.2.2", "text": "over quota", "reason": "deferred"}
EXPIRED = {"code": 421, "enhanced": "4.4.2", "text": "timed out", "reason": "expired"}
EXPIRED_POLICY = {"code": 421, "enhanced": "4.7.0", "text": "IP reputation", "reason": "expired"}
THROTTLED = {"code": 421, "enhanced": "4.7.28", "text": "rate limited", "reason": "deferred"}


def days(*ago: int) -> SoftState:
    return SoftState(tuple(sorted(D0 - a for a in ago)))


@pytest.mark.parametrize(
    ("name", "ev", "state", "expected"),
    [
        (
            "hard bounce suppresses and forgets the soft state",
            event(EventType.BOUNCE, **HARD),
            days(3),
            Decision(suppress=rules.HARD_BOUNCE, changed=True),
        ),
        (
            "hard bounce without state",
            event(EventType.BOUNCE, **HARD),
            None,
            Decision(suppress=rules.HARD_BOUNCE),
        ),
        (
            "complaint suppresses",
            event(EventType.COMPLAINT, reason="abuse"),
            None,
            Decision(suppress=rules.COMPLAINT),
        ),
        (
            "policy block bounce changes nothing",
            event(EventType.BOUNCE, **POLICY_BLOCK),
            None,
            rules.KEEP,
        ),
        ("policy block with state", event(EventType.BOUNCE, **POLICY_BLOCK), days(1), rules.KEEP),
        (
            "permanent mailbox full counts as a soft failure",
            event(EventType.BOUNCE, code=552, enhanced="5.2.2", text="full"),
            None,
            Decision(state=days(0), changed=True),
        ),
        (
            "first expiration starts the state",
            event(EventType.EXPIRATION, **EXPIRED),
            None,
            Decision(state=days(0), changed=True),
        ),
        (
            "an expiration caused by policy does not count",
            event(EventType.EXPIRATION, **EXPIRED_POLICY),
            days(1, 2, 3, 4),
            rules.KEEP,
        ),
        (
            "mailbox-full deferral counts",
            event(EventType.TRANSIENT_FAILURE, **QUOTA),
            days(2),
            Decision(state=days(0, 2), changed=True),
        ),
        (
            "throttling deferral does not count",
            event(EventType.TRANSIENT_FAILURE, **THROTTLED),
            days(2),
            rules.KEEP,
        ),
        (
            "network deferral does not count (it becomes an expiration if it lasts)",
            event(EventType.TRANSIENT_FAILURE, code=421, enhanced="4.4.2", text="timeout"),
            None,
            rules.KEEP,
        ),
        (
            "a second failure the same day counts once",
            event(EventType.TRANSIENT_FAILURE, **QUOTA),
            days(0),
            rules.KEEP,
        ),
        (
            "the fifth day within the window suppresses",
            event(EventType.EXPIRATION, **EXPIRED),
            days(1, 7, 14, 29),
            Decision(suppress=rules.REPEATED_SOFT, changed=True),
        ),
        (
            "days older than the window drop out",
            event(EventType.EXPIRATION, **EXPIRED),
            days(1, 7, 14, 30),
            Decision(state=days(0, 1, 7, 14), changed=True),
        ),
        (
            "an old event arriving late is outside the window",
            event(EventType.EXPIRATION, days_ago=40, **EXPIRED),
            days(1),
            rules.KEEP,
        ),
        (
            "a delivery clears the days up to its own",
            event(EventType.DELIVERY, days_ago=2, code=250),
            days(0, 2, 5),
            Decision(state=days(0), changed=True),
        ),
        (
            "a delivery after every failure forgets the address",
            event(EventType.DELIVERY, code=250),
            days(1, 3),
            Decision(changed=True),
        ),
        ("a delivery without state", event(EventType.DELIVERY, code=250), None, rules.KEEP),
        (
            "events without a recipient are ignored",
            event(EventType.BOUNCE, recipient=" ", **{k: v for k, v in HARD.items()}),
            None,
            rules.KEEP,
        ),
        ("reception changes nothing", event(EventType.RECEPTION), days(1), rules.KEEP),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_decide(name: str, ev: Event, state: SoftState | None, expected: Decision) -> None:
    assert decide(ev, state, POLICY) == expected, name


def test_deferrals_can_be_left_out() -> None:
    only_expirations = Policy(count_deferrals=False)
    assert decide(event(EventType.TRANSIENT_FAILURE, **QUOTA), None, only_expirations) == rules.KEEP
    found = decide(event(EventType.EXPIRATION, **EXPIRED), None, only_expirations)
    assert found.state == days(0)


def test_threshold_and_window_come_from_the_policy() -> None:
    strict = Policy(threshold=2, window_days=7)
    assert decide(event(EventType.EXPIRATION, **EXPIRED), days(6), strict).suppress == (
        rules.REPEATED_SOFT
    )
    assert decide(event(EventType.EXPIRATION, **EXPIRED), days(7), strict).suppress is None


def test_soft_failures_on_separate_days_suppress_only_at_the_threshold() -> None:
    state: SoftState | None = None
    for ago in (20, 15, 10, 5):
        decision = decide(event(EventType.EXPIRATION, days_ago=ago, **EXPIRED), state, POLICY)
        assert decision.suppress is None and decision.state is not None
        state = decision.state
    final = decide(event(EventType.EXPIRATION, **EXPIRED), state, POLICY)
    assert final.suppress == rules.REPEATED_SOFT


def test_state_json_round_trip_and_staleness() -> None:
    state = days(3, 1)
    assert SoftState.from_json(state.to_json()) == state
    assert SoftState.from_json({**state.to_json(), "p": 4}) == state
    assert SoftState.from_json(None) == SoftState()
    assert SoftState.from_json({"days": ["x", 5.0]}) == SoftState((5,))
    assert not rules.stale(days(29), D0, POLICY)
    assert rules.stale(days(30, 45), D0, POLICY)


def test_metric_label_sets_match_the_contracts() -> None:
    assert tuple(str(t) for t in EventType) == Streams.EVENT_TYPES
    assert (*rules.REASONS, UNENGAGED) == Streams.SUPPRESSION_REASONS
    assert Streams.pool_label("bulk-eu") == "bulk-eu"
    assert Streams.pool_label("") == "other"
    assert Streams.pool_label("Not A Pool!") == "other"
    assert Streams.type_label("nonsense") == "other"


def test_internal_topics_are_the_ones_faust_uses() -> None:
    from mailsluice.streams.app import StreamsProcessor, faust_broker_options, internal_topics
    from mailsluice.streams.settings import StreamsSettings

    kafka = KafkaSettings(bootstrap="127.0.0.1:1, 127.0.0.1:2", min_insync_replicas=2)
    processor = StreamsProcessor(StreamsSettings(app_id="x-streams"), kafka, 4)
    specs = {s.name: s for s in internal_topics("x-streams", 4, kafka)}
    used = [
        processor.by_address.get_topic_name(),
        processor.soft.changelog_topic.get_topic_name(),
        processor.counters.changelog_topic.get_topic_name(),
        processor.tally.topic.get_topic_name(),
        *(t.changelog_topic.get_topic_name() for t in processor.tally.tables()),
        processor.engagement.seen.changelog_topic.get_topic_name(),
        processor.engagement.days.changelog_topic.get_topic_name(),
        processor.hygiene.topic.get_topic_name(),
        processor.hygiene.table.changelog_topic.get_topic_name(),
    ]
    assert sorted(specs) == sorted(used)
    assert all(
        s.partitions == 4 and s.configs["min.insync.replicas"] == "2" for s in specs.values()
    )
    assert specs["x-streams-soft-failures-changelog"].configs["cleanup.policy"] == "compact"
    assert faust_broker_options(kafka)["broker"] == ["kafka://127.0.0.1:1", "kafka://127.0.0.1:2"]
    assert processor.ready() == (False, "recovering tables")
