"""Machine judgement of opens and clicks (tracking/machines.py) against the shipped data file
and files of one's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsluice.contracts.events import MACHINE_REASONS
from mailsluice.tracking.machines import Kind, LinkBursts, Machines, judge, load_machines

SHIPPED = load_machines()
BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148"
)
LATE = 3600.0


def verdict(kind: Kind, address: str, agent: str, since: float | None = LATE) -> str:
    return judge(SHIPPED, kind, address, agent, since_sent=since, too_soon_s=10.0)


@pytest.mark.parametrize(
    ("kind", "address", "agent", "expected"),
    [
        ("open", "203.0.113.9", BROWSER, ""),
        ("open", "198.51.100.7", IPHONE, ""),
        ("click", "203.0.113.9", BROWSER, ""),
        # Apple Mail Privacy Protection: Apple's network, or its bare user agent
        ("open", "17.58.101.3", BROWSER, "privacy_proxy"),
        ("open", "::ffff:17.58.101.3", BROWSER, "privacy_proxy"),
        ("open", "203.0.113.9", "Mozilla/5.0", "privacy_proxy"),
        # a person behind the same relay really clicks
        ("click", "17.58.101.3", BROWSER, ""),
        ("click", "203.0.113.9", "Mozilla/5.0 (compatible; Barracuda Sentinel)", "scanner"),
        ("click", "203.0.113.9", "Mimecast-URL-Protect/1.0", "scanner"),
        ("open", "203.0.113.9", "proofpoint url defense", "scanner"),
        ("click", "203.0.113.9", "Microsoft Office Protocol Discovery", "scanner"),
        ("click", "203.0.113.9", "Slackbot-LinkExpanding 1.0", "prefetch"),
        ("open", "203.0.113.9", "python-requests/2.32", "prefetch"),
        ("click", "203.0.113.9", "SomeBot/2.0", "prefetch"),
        ("click", "not an address", BROWSER, ""),
    ],
)
def test_shipped_list(kind: Kind, address: str, agent: str, expected: str) -> None:
    assert verdict(kind, address, agent) == expected


def test_too_soon_after_sending_is_a_machine_and_an_unknown_sending_time_is_not() -> None:
    assert verdict("click", "203.0.113.9", BROWSER, since=2.0) == "too_soon"
    assert verdict("open", "203.0.113.9", BROWSER, since=9.9) == "too_soon"
    assert verdict("click", "203.0.113.9", BROWSER, since=10.0) == ""
    assert verdict("click", "203.0.113.9", BROWSER, since=None) == ""
    # what the request says of itself wins over the timing
    assert verdict("click", "203.0.113.9", "Mimecast", since=1.0) == "scanner"


def test_every_reason_given_is_a_contract_reason() -> None:
    cases = [
        ("open", "17.0.0.1", BROWSER, LATE),
        ("click", "1.2.3.4", "barracuda", LATE),
        ("click", "1.2.3.4", "curl/8", LATE),
        ("click", "1.2.3.4", BROWSER, 0.0),
    ]
    reasons = {verdict(k, a, u, s) for k, a, u, s in cases}
    assert reasons == {"privacy_proxy", "scanner", "prefetch", "too_soon"}
    assert reasons <= set(MACHINE_REASONS)


def test_a_file_of_ones_own_replaces_the_shipped_list(tmp_path: Path) -> None:
    path = tmp_path / "machines.yaml"
    path.write_text(
        "privacy_proxy: {networks: [192.0.2.0/24]}\n"
        "scanner: {agents: [AcmeGuard], networks: ['2001:db8::/32']}\n"
        "every_link: {links: 2, within_s: 5}\n"
    )
    mine = load_machines(str(path))
    assert mine.every_link_links == 2 and mine.every_link_within_s == 5.0

    def says(kind: Kind, address: str, agent: str) -> str:
        return judge(mine, kind, address, agent, since_sent=LATE, too_soon_s=10)

    assert says("open", "192.0.2.4", BROWSER) == "privacy_proxy"
    assert says("open", "17.0.0.1", BROWSER) == ""  # not in this file
    assert says("click", "2001:db8::1", BROWSER) == "scanner"
    assert says("click", "1.2.3.4", "acmeguard/3") == "scanner"
    assert says("click", "1.2.3.4", "Mimecast") == ""


@pytest.mark.parametrize(
    "text",
    ["privacy_proxy: {networks: [not-a-net]}\n", "every_link: {links: 1}\n", "- a list\n", "{"],
)
def test_a_bad_file_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError):
        load_machines(str(path))


def test_an_empty_list_judges_only_by_time() -> None:
    assert judge(Machines(), "open", "17.0.0.1", "Mimecast", since_sent=LATE, too_soon_s=10) == ""
    assert (
        judge(Machines(), "open", "17.0.0.1", "Mimecast", since_sent=1.0, too_soon_s=10)
        == "too_soon"
    )


def test_clicks_on_every_link_at_once_and_not_a_person_reading_on() -> None:
    bursts = LinkBursts(3, 2.0)
    assert not bursts.click("q1|a", 0, 100.0)
    assert not bursts.click("q1|a", 0, 100.1)  # the same link again is no burst
    assert not bursts.click("q1|a", 1, 100.5)
    assert bursts.click("q1|a", 2, 101.0)
    assert not bursts.click("q2|a", 3, 101.0)  # another message
    # a person: the same three links minutes apart
    assert not bursts.click("q3|a", 0, 0.0)
    assert not bursts.click("q3|a", 1, 60.0)
    assert not bursts.click("q3|a", 2, 120.0)


def test_bursts_forget_the_oldest_messages_past_capacity() -> None:
    bursts = LinkBursts(2, 10.0, capacity=2)
    bursts.click("m1", 0, 0.0)
    bursts.click("m2", 0, 0.0)
    bursts.click("m3", 0, 0.0)  # m1 forgotten
    assert not bursts.click("m1", 1, 1.0)
    assert bursts.click("m3", 1, 1.0)
