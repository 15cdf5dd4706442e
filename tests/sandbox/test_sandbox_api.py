"""The sandbox's Mailpit-shaped API beyond listing: info, search, delete, read status, the
message views and their CSP, live events, and the chaos triggers at MAIL, RCPT and DATA."""

from __future__ import annotations

import asyncio
import json
import smtplib
from collections.abc import AsyncIterator
from email import policy
from email.message import EmailMessage
from typing import Any

import aiohttp
import pytest
from support.eventually import eventually

from mailsluice.sandbox.chaos import Chaos, ChaosError, Rule, Triggers
from mailsluice.sandbox.search import parse
from mailsluice.sandbox.server import Sandbox
from mailsluice.sandbox.settings import SandboxSettings


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    box = await Sandbox(SandboxSettings(smtp_port=0, http_port=0, chaos_seed=7)).start()
    try:
        yield box
    finally:
        await box.stop()


def mail(subject: str, sender: str = "alice@sender.test", to: str = "bob@example.test") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Alice <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(f"Text of {subject}.\n")
    msg.add_alternative(f"<p>HTML of <b>{subject}</b></p><script>boom()</script>", subtype="html")
    return msg.as_bytes()


def transaction(box: Sandbox, sender: str, rcpts: list[str], raw: bytes) -> list[Any]:
    """MAIL, each RCPT and DATA by hand: the replies in order (a closed connection ends it)."""
    replies: list[Any] = []
    with smtplib.SMTP("127.0.0.1", box.smtp_port, timeout=10) as client:
        client.ehlo("client.test")
        try:
            replies.append(client.mail(sender))
            for rcpt in rcpts:
                replies.append(client.rcpt(rcpt))
            try:
                replies.append(client.data(raw))
            except smtplib.SMTPDataError as exc:  # no 354: no recipient was accepted
                replies.append((exc.smtp_code, exc.smtp_error))
        except smtplib.SMTPServerDisconnected:
            replies.append("closed")
    return replies


async def send(box: Sandbox, subject: str, **kw: str) -> None:
    to = kw.get("to", "bob@example.test")
    sender = kw.get("sender", "alice@sender.test")
    replies = await asyncio.to_thread(transaction, box, sender, [to], mail(subject, sender, to))
    assert replies[-1][0] == 250, replies


async def call(
    http: aiohttp.ClientSession, method: str, url: str, expect: int = 200, **kw: Any
) -> Any:
    async with http.request(method, url, **kw) as resp:
        body = await resp.text()
        assert resp.status == expect, body
        return json.loads(body) if resp.content_type == "application/json" else body


async def subjects(http: aiohttp.ClientSession, base: str, query: str) -> list[str]:
    data = await call(http, "GET", f"{base}/api/v1/search", params={"query": query})
    return [m["Subject"] for m in data["messages"]]


async def test_info_counts_messages_size_and_runtime(sandbox: Sandbox) -> None:
    await send(sandbox, "one")
    await send(sandbox, "two")
    async with aiohttp.ClientSession() as http:
        info = await call(http, "GET", f"{sandbox.http_url}/api/v1/info")
        assert info["Messages"] == 2 and info["Unread"] == 2
        assert info["Database"] == "memory" and info["Version"]
        assert info["DatabaseSize"] == sum(len(m.raw) for m in sandbox.store.all())
        stats = info["RuntimeStats"]
        assert stats["SMTPAccepted"] == 2 and stats["SMTPAcceptedSize"] == info["DatabaseSize"]
        assert stats["SMTPRejected"] == 0 and stats["MessagesDeleted"] == 0
        assert stats["Memory"] > 0 and stats["Uptime"] >= 0
        await call(http, "GET", f"{sandbox.http_url}/api/v1/message/latest")
        await call(http, "DELETE", f"{sandbox.http_url}/api/v1/messages")
        info = await call(http, "GET", f"{sandbox.http_url}/api/v1/info")
        assert (info["Messages"], info["Unread"], info["DatabaseSize"]) == (0, 0, 0)
        assert info["RuntimeStats"]["MessagesDeleted"] == 2


async def test_search_syntax(sandbox: Sandbox) -> None:
    await send(sandbox, "Monthly invoice", sender="billing@shop.test", to="carol@example.test")
    await send(sandbox, "Welcome aboard", sender="hello@shop.test", to="dave@other.test")
    await send(sandbox, "Your invoice is late", sender="dunning@bank.test")
    base = sandbox.http_url
    async with aiohttp.ClientSession() as http:
        assert await subjects(http, base, "invoice") == ["Your invoice is late", "Monthly invoice"]
        assert await subjects(http, base, '"monthly invoice"') == ["Monthly invoice"]
        assert await subjects(http, base, "from:shop.test") == [
            "Welcome aboard",
            "Monthly invoice",
        ]
        assert await subjects(http, base, "to:dave@") == ["Welcome aboard"]
        assert await subjects(http, base, 'subject:"is late"') == ["Your invoice is late"]
        assert await subjects(http, base, "invoice -from:bank.test") == ["Monthly invoice"]
        assert await subjects(http, base, "welcome invoice") == []  # every word must match
        assert await subjects(http, base, "Welcome aboard.") == ["Welcome aboard"]  # body text
        data = await call(http, "GET", f"{base}/api/v1/search", params={"query": "invoice"})
        assert (data["messages_count"], data["total"], data["count"]) == (2, 3, 2)
        await call(http, "GET", f"{base}/api/v1/message/latest")  # read: the late invoice
        assert await subjects(http, base, "is:read") == ["Your invoice is late"]
        assert await subjects(http, base, "is:unread invoice") == ["Monthly invoice"]
        await call(http, "GET", f"{base}/api/v1/search", expect=400)  # query is required
        await call(http, "DELETE", f"{base}/api/v1/search", params={"query": "from:shop.test"})
        assert [m.searchable.subject for m in sandbox.store.all()] == ["your invoice is late"]


def test_search_terms_parse_negation_fields_and_quotes() -> None:
    terms = parse('from:A@B "two words" -x !subject:hi unknown:thing "unbalanced')
    assert [(t.field, t.value, t.negated) for t in terms] == [
        ("from", "a@b", False),
        (None, "two words", False),
        (None, "x", True),
        ("subject", "hi", True),
        (None, "unknown:thing", False),
        (None, '"unbalanced', False),
    ]


async def test_delete_one_and_read_status(sandbox: Sandbox) -> None:
    for n in range(3):
        await send(sandbox, f"m{n}")
    base = sandbox.http_url
    async with aiohttp.ClientSession() as http:
        listing = await call(http, "GET", f"{base}/api/v1/messages")
        first, second, _ = (m["ID"] for m in listing["messages"])
        await call(http, "DELETE", f"{base}/api/v1/messages", json={"IDs": [first, "missing"]})
        listing = await call(http, "GET", f"{base}/api/v1/messages")
        assert [m["Subject"] for m in listing["messages"]] == ["m1", "m0"]
        await call(http, "GET", f"{base}/api/v1/message/{first}", expect=404)
        assert (await call(http, "GET", f"{base}/api/v1/message/{second}"))["Read"] is True
        listing = await call(http, "GET", f"{base}/api/v1/messages")
        assert [m["Read"] for m in listing["messages"]] == [True, False]
        assert listing["unread"] == 1
        await call(http, "PUT", f"{base}/api/v1/messages", json={"Read": True})
        assert (await call(http, "GET", f"{base}/api/v1/messages"))["unread"] == 0
        await call(http, "PUT", f"{base}/api/v1/messages", json={"IDs": [second], "Read": False})
        assert (await call(http, "GET", f"{base}/api/v1/messages"))["unread"] == 1


async def test_views_headers_and_ui_are_served_safely(sandbox: Sandbox) -> None:
    await send(sandbox, "<script>alert(1)</script>")
    base = sandbox.http_url
    async with aiohttp.ClientSession() as http:
        full = await call(http, "GET", f"{base}/api/v1/message/latest")
        assert full["Text"].strip() == "Text of <script>alert(1)</script>."
        assert "<b><script>alert(1)</script></b>" in full["HTML"]
        async with http.get(f"{base}/view/{full['ID']}.html") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            csp = resp.headers["Content-Security-Policy"]
        # No script source at all, no remote loads, and an opaque origin even outside the UI.
        assert "default-src 'none'" in csp and "script-src" not in csp
        assert "sandbox" in csp and "allow-scripts" not in csp and "allow-same-origin" not in csp
        assert (await call(http, "GET", f"{base}/view/latest.txt")).startswith("Text of")
        headers = await call(http, "GET", f"{base}/api/v1/message/latest/headers")
        assert headers["Subject"] == ["<script>alert(1)</script>"]
        assert list(headers) == sorted(headers)
        async with http.get(f"{base}/") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            page = await resp.text()
            ui_csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in ui_csp and "unsafe-inline" not in ui_csp.split("style")[0]
        assert 'sandbox="allow-popups"' in page
        for name in ("app.js", "app.css"):
            await call(http, "GET", f"{base}/ui/{name}")
        await call(http, "GET", f"{base}/ui/nope.js", expect=404)


async def test_events_stream_new_and_deleted_messages(sandbox: Sandbox) -> None:
    seen: list[tuple[str, Any]] = []

    async def listen(resp: aiohttp.ClientResponse) -> None:
        kind = ""
        async for line in resp.content:
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                kind = text[7:]
            elif text.startswith("data: "):
                seen.append((kind, json.loads(text[6:])))

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{sandbox.http_url}/api/v1/events") as resp,
    ):
        assert resp.headers["Content-Type"] == "text/event-stream"
        reader = asyncio.create_task(listen(resp))
        await eventually(lambda: len(sandbox.events) == 1, within=10, what="a subscriber")
        await send(sandbox, "live one")
        await eventually(lambda: len(seen) == 1, within=10, what="the new event")
        assert seen[0][0] == "new" and seen[0][1]["Subject"] == "live one"
        await call(http, "DELETE", f"{sandbox.http_url}/api/v1/messages")
        await eventually(lambda: len(seen) == 2, within=10, what="the delete event")
        assert seen[1] == ("delete", {"IDs": []})
        reader.cancel()


async def test_chaos_api_shape_and_validation(sandbox: Sandbox) -> None:
    url = f"{sandbox.http_url}/api/v1/chaos"
    async with aiohttp.ClientSession() as http:
        off = await call(http, "GET", url)
        assert off["Sender"] == {"ErrorCode": 0, "Probability": 0} and off["Rules"] == []
        body = {
            "Recipient": {"ErrorCode": 451, "Probability": 5},
            "Rules": [
                {"Stage": "rcpt", "Pattern": "*@slow.test", "ErrorCode": 421, "Probability": 100}
            ],
        }
        now = await call(http, "PUT", url, json=body)
        assert now["Recipient"] == {"ErrorCode": 451, "Probability": 5}
        assert now["Sender"] == {"ErrorCode": 0, "Probability": 0}  # omitted: off, as Mailpit
        assert now["Rules"][0]["Pattern"] == "*@slow.test"
        assert await call(http, "GET", url) == now
        for bad in (
            {"Recipient": {"ErrorCode": 250, "Probability": 5}},
            {"Sender": {"ErrorCode": 451, "Probability": 101}},
            {"Rules": [{"Stage": "helo", "ErrorCode": 451, "Probability": 1}]},
            {"Surprise": {}},
        ):
            await call(http, "PUT", url, expect=400, json=bad)
        await call(http, "PUT", url, json={})
        assert (await call(http, "GET", url))["Recipient"]["Probability"] == 0


async def test_chaos_answers_at_mail_rcpt_and_data(sandbox: Sandbox) -> None:
    sandbox.chaos.set(
        Triggers(
            rules=(
                Rule("mail", "spammer@*", 554, 100),
                Rule("rcpt", "*@FULL.test", 552, 100),
                Rule("rcpt", "bye@*", 421, 100),
                Rule("data", "late@*", 451, 100, "try later"),
            )
        )
    )
    raw = mail("chaos")

    def run(sender: str, rcpts: list[str]) -> list[Any]:
        return transaction(sandbox, sender, rcpts, raw)

    replies = await asyncio.to_thread(run, "spammer@x.test", ["a@b.test"])
    assert replies[0] == (554, b"5.7.1 Rejected by policy")
    replies = await asyncio.to_thread(run, "ok@x.test", ["u@full.test", "fine@b.test"])
    assert replies[1] == (552, b"5.2.2 Mailbox full") and replies[2][0] == 250
    assert replies[3][0] == 250  # the message went to the recipient that was accepted
    replies = await asyncio.to_thread(run, "ok@x.test", ["fine@b.test", "late@b.test"])
    assert replies[3] == (451, b"4.3.0 try later")
    replies = await asyncio.to_thread(run, "ok@x.test", ["bye@b.test", "fine@b.test"])
    assert replies[1][0] == 421 and replies[2] == "closed"
    assert [m.rcpt_tos for m in sandbox.store.all()] == [("fine@b.test",)]
    assert sandbox.store.stats.rejected == 4


def test_chaos_probability_follows_the_seeded_dice() -> None:
    triggers = Triggers.parse({"Recipient": {"ErrorCode": 451, "Probability": 30}})

    def rolls(seed: int) -> list[str | None]:
        chaos = Chaos(triggers, seed=seed)
        return [chaos.verdict("rcpt", ["x@y"]) for _ in range(1000)]

    first = rolls(42)
    assert first == rolls(42)  # the same seed, the same failures
    assert first != rolls(43)
    hits = [r for r in first if r is not None]
    assert 200 < len(hits) < 400  # about 30%
    assert set(hits) == {"451 4.3.0 Local error in processing, try again later"}
    assert Chaos(triggers, seed=1).verdict("mail", ["x@y"]) is None  # Recipient: RCPT only
    never = Triggers.parse({"Sender": {"ErrorCode": 451, "Probability": 0}})
    assert all(Chaos(never).verdict("mail", ["x@y"]) is None for _ in range(100))
    with pytest.raises(ChaosError):
        Triggers.parse({"Rules": {"not": "a list"}})


async def test_chaos_from_settings_and_a_bad_setting_is_refused() -> None:
    rules = [{"Stage": "rcpt", "Pattern": "*@gmail.test", "ErrorCode": 421, "Probability": 100}]
    settings = SandboxSettings(
        smtp_port=0, http_port=0, chaos_triggers=json.dumps({"Rules": rules})
    )
    async with Sandbox(settings) as box:
        replies = await asyncio.to_thread(transaction, box, "a@x.test", ["u@gmail.test"], mail("x"))
        assert replies[1][0] == 421
    with pytest.raises(ValueError, match="bad chaos triggers"):
        SandboxSettings(chaos_triggers='{"Rules": [{"Stage": "nope"}]}')
    with pytest.raises(ValueError, match="bad chaos triggers"):
        SandboxSettings(chaos_triggers="{not json")


def test_the_same_rules_drive_the_tests_fake_mx(fake_mx: Any) -> None:
    """tests/support/fake_mx.py takes the sandbox's chaos rules in its script."""
    chaos = Chaos(
        Triggers(
            rules=(
                Rule("mail", "blocked@*", 550, 100),
                Rule("rcpt", "*@busy.test", 421, 100),
                Rule("data", "*@late.test", 451, 100),
            )
        )
    )
    mx = fake_mx(chaos=chaos)
    raw = b"Subject: x\r\n\r\nbody\r\n"

    def run(sender: str, rcpts: list[str]) -> list[Any]:
        replies: list[Any] = []
        host, port = mx.address.rsplit(":", 1)
        with smtplib.SMTP(host, int(port), timeout=10) as client:
            client.ehlo("client.test")
            try:
                replies.append(client.mail(sender))
                replies.extend(client.rcpt(r) for r in rcpts)
                replies.append(client.data(raw))
            except smtplib.SMTPServerDisconnected:
                replies.append("closed")
            except smtplib.SMTPDataError as exc:
                replies.append((exc.smtp_code, exc.smtp_error))
        return replies

    assert run("blocked@x.test", ["a@b.test"])[0][0] == 550
    assert run("ok@x.test", ["a@late.test"])[2][0] == 451
    replies = run("ok@x.test", ["a@busy.test", "b@b.test"])
    assert replies[1][0] == 421 and replies[2] == "closed"
    assert run("ok@x.test", ["a@b.test"])[2][0] == 250
    assert [m.rcpt_tos for m in mx.messages] == [("a@b.test",)]


async def test_attachments_are_counted_and_listed(sandbox: Sandbox) -> None:
    msg = EmailMessage()
    msg["From"] = "a@x.test"
    msg["To"] = "b@y.test"
    msg["Subject"] = "with a file"
    msg.set_content("see attached")
    msg.add_attachment(b"%PDF-1.4 tiny", maintype="application", subtype="pdf", filename="a.pdf")
    replies = await asyncio.to_thread(
        transaction, sandbox, "a@x.test", ["b@y.test"], msg.as_bytes()
    )
    assert replies[-1][0] == 250
    async with aiohttp.ClientSession() as http:
        listing = await call(http, "GET", f"{sandbox.http_url}/api/v1/messages")
        assert listing["messages"][0]["Attachments"] == 1
        assert listing["messages"][0]["Snippet"] == "see attached"
        full = await call(http, "GET", f"{sandbox.http_url}/api/v1/message/latest")
    (attachment,) = full["Attachments"]
    assert attachment["FileName"] == "a.pdf" and attachment["ContentType"] == "application/pdf"
    assert attachment["Size"] == len(b"%PDF-1.4 tiny")
    assert full["Text"].strip() == "see attached"


PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2b2c2d40000000049454e44ae426082"
)


def related_mail() -> bytes:
    """HTML with an inline image (multipart/related, Content-ID, no disposition: what most
    mailers write) and a PDF attachment."""
    msg = EmailMessage()
    msg["From"] = "a@x.test"
    msg["To"] = "b@y.test"
    msg["Subject"] = "logo inline"
    msg.set_content("text")
    html = "<p><img src='cid:Logo@x.test' alt='logo'><img src='cid:gone'></p>"
    msg.add_alternative(html, subtype="html")
    alternative = msg.get_payload()[1]
    alternative.add_related(PNG, maintype="image", subtype="png", cid="<logo@x.test>")
    for part in alternative.walk():
        if part.get_content_type() == "image/png":
            del part["Content-Disposition"]
    msg.add_attachment(b"%PDF-1.4 tiny", maintype="application", subtype="pdf", filename="é.pdf")
    return msg.as_bytes(policy=policy.SMTP)  # CRLF: smtplib sends bytes as they are


async def test_inline_images_show_and_files_download(sandbox: Sandbox) -> None:
    raw = related_mail()
    assert b"Content-Disposition: inline" not in raw  # the image part carries only its Content-ID
    replies = await asyncio.to_thread(transaction, sandbox, "a@x.test", ["b@y.test"], raw)
    assert replies[-1][0] == 250
    base = sandbox.http_url
    async with aiohttp.ClientSession() as http:
        full = await call(http, "GET", f"{base}/api/v1/message/latest")
        (image,) = full["Inline"]
        assert image["ContentID"] == "logo@x.test" and image["ContentType"] == "image/png"
        (pdf,) = full["Attachments"]
        html = await call(http, "GET", f"{base}/view/{full['ID']}.html")
        # The referenced image is inlined (the Content-ID matched case-insensitively), the
        # unknown one is left as it was; the CSP still allows no load from anywhere else.
        assert "cid:Logo@x.test" not in html and "data:image/png;base64," in html
        assert "src='cid:gone'" in html
        async with http.get(f"{base}/api/v1/message/{full['ID']}/part/{pdf['PartID']}") as resp:
            assert resp.status == 200 and await resp.read() == b"%PDF-1.4 tiny"
            assert resp.content_type == "application/pdf"
            assert resp.headers["Content-Disposition"] == "attachment; filename*=UTF-8''%C3%A9.pdf"
            assert "sandbox" in resp.headers["Content-Security-Policy"]
        async with http.get(f"{base}/api/v1/message/{full['ID']}/part/{image['PartID']}") as resp:
            assert await resp.read() == PNG
        await call(http, "GET", f"{base}/api/v1/message/{full['ID']}/part/0", expect=404)
