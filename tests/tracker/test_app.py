"""The tracker's endpoints (tracker/app.py) with FastAPI's TestClient, a recording list in
place of Kafka and a simulated clock: what each answer is, what event it records, and what a
token that is not ours gets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from mailsluice.contracts.events import Event, EventType
from mailsluice.metrics.tracker import Tracker
from mailsluice.tracker.app import PIXEL, Judging, build_app, client_address, trusted_networks
from mailsluice.tracking.machines import load_machines
from mailsluice.tracking.tokens import Mark, TrackingKeys

KEYS = TrackingKeys({"t1": b"k" * 32})
SENT = 1_800_000_000
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/133.0"
MARK = Mark("open", "Q1", "ann@example.org", SENT, "bulk", "gmail.com", "acme", "spring")
TARGET = "https://shop.example.com/sale?a=1&b=%C3%A9#top"


class Clock:
    def __init__(self) -> None:
        self.now = SENT + 3600.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def recorded() -> list[Event]:
    return []


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(recorded: list[Event], clock: Clock) -> Iterator[TestClient]:
    judging = Judging(load_machines(), 10.0, trusted_networks("10.0.0.0/8"))
    app = build_app(KEYS, judging, recorded.append, clock=clock)
    with TestClient(app, client=("198.51.100.20", 50000)) as c:
        yield c


def count(kind: str, outcome: str) -> float:
    return Tracker.REQUESTS.labels(kind, outcome)._value.get()


def test_open_answers_an_uncached_gif_and_records_the_open(
    client: TestClient, recorded: list[Event]
) -> None:
    resp = client.get(f"/o/{KEYS.mint(MARK)}", headers={"user-agent": BROWSER})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "image/gif"
    assert resp.content == PIXEL and PIXEL.startswith(b"GIF89a")
    assert "no-store" in resp.headers["cache-control"]
    (event,) = recorded
    assert event.type == EventType.OPEN
    assert (event.queue_id, event.recipient, event.pool, event.routing_key) == (
        "Q1",
        "ann@example.org",
        "bulk",
        "gmail.com",
    )
    assert (event.tenant, event.campaign, event.sent_at) == ("acme", "spring", float(SENT))
    assert (event.remote, event.agent, event.machine, event.ts) == (
        "198.51.100.20",
        BROWSER,
        "",
        SENT + 3600.0,
    )


def test_click_redirects_to_the_sealed_target_and_records_the_click(
    client: TestClient, recorded: list[Event]
) -> None:
    token = KEYS.mint(MARK.click(4, TARGET))
    resp = client.get(f"/c/{token}", headers={"user-agent": BROWSER}, follow_redirects=False)
    assert resp.status_code == 302
    assert resp.headers["location"] == TARGET
    (event,) = recorded
    assert (event.type, event.link, event.link_index, event.machine) == (
        EventType.CLICK,
        TARGET,
        4,
        "",
    )


def test_tokens_that_are_not_ours(client: TestClient, recorded: list[Event]) -> None:
    good = KEYS.mint(MARK.click(0, TARGET))
    changed = good[:30] + ("A" if good[30] != "A" else "B") + good[31:]
    forged = TrackingKeys({"t1": b"x" * 32}).mint(MARK.click(0, "https://evil.example"))
    before = count("click", "forged")
    for token in (changed, forged, "garbage", KEYS.mint(MARK)):  # the last: an open's token
        resp = client.get(f"/c/{token}", follow_redirects=False)
        assert resp.status_code == 404, token
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["status"] == 404
        assert "location" not in resp.headers
    assert count("click", "forged") == before + 2
    opened = count("open", "forged")
    resp = client.get(f"/o/{changed}")  # a broken pixel would show: still the GIF
    assert resp.status_code == 200 and resp.content == PIXEL
    assert count("open", "forged") == opened + 1
    assert recorded == []


def test_machines_are_marked(client: TestClient, recorded: list[Event], clock: Clock) -> None:
    client.get(f"/o/{KEYS.mint(MARK)}", headers={"x-forwarded-for": "17.1.2.3"})
    client.get(
        f"/c/{KEYS.mint(MARK.click(0, TARGET))}",
        headers={"user-agent": "Mimecast URL Protect"},
        follow_redirects=False,
    )
    clock.now = SENT + 3.0
    client.get(f"/c/{KEYS.mint(MARK.click(1, TARGET))}", follow_redirects=False)
    # peer 198.51.100.20 is not a trusted proxy: its X-Forwarded-For is not believed
    assert [(e.machine, e.remote) for e in recorded] == [
        ("", "198.51.100.20"),
        ("scanner", "198.51.100.20"),
        ("too_soon", "198.51.100.20"),
    ]


def test_every_link_at_once(client: TestClient, recorded: list[Event], clock: Clock) -> None:
    for link in range(4):
        clock.now += 0.2
        token = KEYS.mint(MARK.click(link, f"{TARGET}{link}"))
        client.get(f"/c/{token}", headers={"user-agent": BROWSER}, follow_redirects=False)
    assert [e.machine for e in recorded] == ["", "", "every_link", "every_link"]


def test_a_trusted_proxy_names_the_client() -> None:
    trusted = trusted_networks("10.0.0.0/8, 192.0.2.1")
    assert client_address("10.1.1.1", "17.5.5.5", trusted) == "17.5.5.5"
    # the client wrote the first entry itself; the proxies appended the rest
    assert client_address("10.1.1.1", "6.6.6.6, 17.5.5.5, 192.0.2.1", trusted) == "17.5.5.5"
    assert client_address("203.0.113.1", "17.5.5.5", trusted) == "203.0.113.1"
    assert client_address("10.1.1.1", "", trusted) == "10.1.1.1"
    assert client_address("10.1.1.1", "17.5.5.5", ()) == "10.1.1.1"


def test_a_head_answers_like_a_get_and_records_nothing(
    client: TestClient, recorded: list[Event]
) -> None:
    click = KEYS.mint(MARK.click(1, TARGET))
    before = count("click", "head")
    resp = client.head(f"/c/{click}", follow_redirects=False)
    assert (resp.status_code, resp.headers["location"]) == (302, TARGET)
    assert client.head(f"/o/{KEYS.mint(MARK)}").headers["content-type"] == "image/gif"
    assert client.head(f"/c/{click[:-4]}AAAA", follow_redirects=False).status_code == 404
    assert recorded == [] and count("click", "head") == before + 1
