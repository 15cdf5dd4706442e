"""The sandbox's web UI in a real browser: Debian's Chromium driven by Playwright (its own
browser download cannot work here, so it is launched by executable path).

Mail comes in through the sandbox's SMTP port, and in the second test through the whole
pipeline (ingest -> Kafka -> a delivery worker -> the sandbox). The page lists it, opens it (the
subject and text, the HTML part in the sandboxed frame, whose scripts do not run and whose remote
image is not loaded), filters by search, deletes, and shows a message arriving while it is open
without a reload. Screenshots go to $SANDBOX_SCREENSHOTS (docs/sandbox to refresh the docs' ones),
else to the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import smtplib
import struct
import zlib
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from support.delivery_worker import Running, new_pool, setup_pool
from support.eventually import eventually
from support.ingest import running_ingest, smtp_send, uid

from mailsluice.delivery.service import DeliveryService
from mailsluice.delivery.transport.client import Transport
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.resolver import DnsSettings, make_resolver
from mailsluice.sandbox.server import Sandbox
from mailsluice.sandbox.settings import SandboxSettings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 15_000


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install_system_deps.sh")
    async with async_playwright() as pw:
        # --no-sandbox: Chromium's own OS sandbox refuses to run as root (these VMs); the
        # message frame's HTML sandbox, what this test checks, is not affected by it.
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxSettings(smtp_port=0, http_port=0)) as box:
        yield box


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        yield await context.new_page()
    finally:
        await context.close()


def shots(tmp_path: Path) -> Path:
    target = Path(os.environ.get("SANDBOX_SCREENSHOTS") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    return target


def message(subject: str, text: str, html: str | None = None, to: str = "bob@example.test") -> Any:
    msg = EmailMessage()
    msg["From"] = "Shop <orders@shop.test>"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg


async def smtp(box: Sandbox, msg: EmailMessage) -> None:
    def go() -> None:
        with smtplib.SMTP("127.0.0.1", box.smtp_port, timeout=10) as client:
            client.send_message(msg)

    await asyncio.to_thread(go)


def shipped_html(base: str) -> str:
    # A script that would change the greeting, and a remote image (a tracking pixel): neither
    # may happen in the sandboxed frame.
    return (
        "<html><body><h1 style='color:#0a6'>Your order has shipped</h1>"
        "<p id='greeting'>Hello <b>Bob</b></p>"
        f"<img src='{base}/healthz?pixel=1' alt='pixel'>"
        "<script>document.getElementById('greeting').textContent = 'pwned';</script>"
        "</body></html>"
    )


async def test_list_open_search_delete_and_live(
    sandbox: Sandbox, page: Page, tmp_path: Path
) -> None:
    base = sandbox.http_url
    await smtp(sandbox, message("Order shipped", "Hello Bob, text part.", shipped_html(base)))
    await smtp(sandbox, message("<script>window.pwned = 1</script>", "Plain only."))
    loaded: list[str] = []
    blocked: dict[str, str | None] = {}
    page.on("response", lambda response: loaded.append(response.url))
    page.on("requestfailed", lambda request: blocked.update({request.url: request.failure}))
    await page.goto(f"{base}/")
    rows = page.locator("#messages li")
    await expect(rows).to_have_count(2, timeout=WAIT_MS)
    await expect(page.locator("#live")).to_have_text("live", timeout=WAIT_MS)
    # The script in a subject is text, not markup.
    await expect(rows.nth(0).locator(".subject")).to_have_text("<script>window.pwned = 1</script>")
    assert await page.evaluate("window.pwned") is None
    await page.screenshot(path=shots(tmp_path) / "list.png")

    await rows.filter(has_text="Order shipped").click()
    await expect(page.locator("#view-subject")).to_have_text("Order shipped", timeout=WAIT_MS)
    frame = page.locator("#view-html")
    assert await frame.get_attribute("sandbox") == "allow-popups"
    greeting = page.frame_locator("#view-html").locator("#greeting")
    await expect(greeting).to_have_text("Hello Bob", timeout=WAIT_MS)  # the script did not run
    await page.screenshot(path=shots(tmp_path) / "message.png")
    # Nor was the image loaded: the view's CSP refused it.
    pixel = f"{base}/healthz?pixel=1"
    await eventually(lambda: pixel in blocked, within=10, what="the pixel's refusal")
    assert blocked[pixel] == "csp" and pixel not in loaded
    await page.click("#tabs button[data-tab=text]")
    await expect(page.locator("#view-text")).to_have_text("Hello Bob, text part.\n")
    await page.click("#tabs button[data-tab=headers]")
    await expect(page.locator("#view-headers")).to_contain_text("Order shipped")
    await page.click("#tabs button[data-tab=raw]")
    await expect(page.locator("#view-raw")).to_contain_text("Subject: Order shipped")

    await page.fill("#search-input", "subject:shipped")
    await page.press("#search-input", "Enter")
    await expect(rows).to_have_count(1, timeout=WAIT_MS)
    await expect(rows.nth(0).locator(".subject")).to_have_text("Order shipped")
    await page.click("#search-clear")
    await expect(rows).to_have_count(2, timeout=WAIT_MS)

    # While the page is open: a new message appears without a reload.
    await smtp(sandbox, message("Arrived live", "Pushed to the page."))
    await expect(rows).to_have_count(3, timeout=WAIT_MS)
    await expect(rows.nth(0).locator(".subject")).to_have_text("Arrived live")

    await page.click("#delete")  # the open message, Order shipped
    await expect(rows).to_have_count(2, timeout=WAIT_MS)
    await expect(page.locator("#messages")).not_to_contain_text("Order shipped")
    await expect(page.locator("#view")).to_be_hidden()
    assert sorted(m.searchable.subject for m in sandbox.store.all()) == [
        "<script>window.pwned = 1</script>",
        "arrived live",
    ]
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.click("#delete-all")
    await expect(page.locator("#empty")).to_be_visible(timeout=WAIT_MS)
    assert len(sandbox.store) == 0


def png(width: int, height: int) -> bytes:
    """An opaque green RGBA PNG: its size is what the browser reports once it decoded it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\0" + b"\x00\xaa\x66\xff" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


async def test_inline_image_shows_and_attachment_downloads(
    sandbox: Sandbox, page: Page, tmp_path: Path
) -> None:
    msg = message(
        "Logo inside", "See the logo.", "<p id='p'><img id='logo' src='cid:logo@shop.test'></p>"
    )
    html_part = msg.get_payload()[1]
    html_part.add_related(png(2, 1), maintype="image", subtype="png", cid="<logo@shop.test>")
    msg.add_attachment(
        b"%PDF-1.4 tiny", maintype="application", subtype="pdf", filename="invoice.pdf"
    )
    await smtp(sandbox, msg)
    await page.goto(f"{sandbox.http_url}/")
    await page.locator("#messages li").first.click()
    await expect(page.locator("#view-subject")).to_have_text("Logo inside", timeout=WAIT_MS)
    logo = page.frame_locator("#view-html").locator("#logo")
    await expect(logo).to_be_attached(timeout=WAIT_MS)
    # Decoded from the message's own part, under the view's CSP that refuses remote loads.
    await eventually(
        lambda: logo.evaluate("img => img.complete && img.naturalWidth === 2"),
        within=10,
        what="the inline image decoded",
    )
    link = page.locator("#view-meta a", has_text="invoice.pdf")
    async with page.expect_download() as waiting:
        await link.click()
    download = await waiting.value
    assert download.suggested_filename == "invoice.pdf"
    saved = await download.path()
    assert await asyncio.to_thread(Path(saved).read_bytes) == b"%PDF-1.4 tiny"


async def test_mail_through_the_pipeline_shows_in_the_browser(
    sandbox: Sandbox, page: Page, kafka: Any, dns_server: Any, dns_nameserver: str
) -> None:
    """ingest (SMTP, 250) -> the pool's Kafka queue -> a delivery worker -> the sandbox -> UI."""
    ks = kafka.settings(queue_partitions=1)
    pool = new_pool()
    await setup_pool(ks, pool)
    domain = f"ui-{uid()}.test"
    dns_server.set_mx(domain, [(10, f"mx.{domain}")])
    transport = Transport(
        OutboundSettings(smarthost=sandbox.smtp_address),
        make_resolver(DnsSettings(nameservers=dns_nameserver)),
    )
    worker = DeliveryService(DeliverySettings(pool=pool, commit_interval_s=0.2), ks, transport)
    base = sandbox.http_url
    await page.goto(f"{base}/")
    await expect(page.locator("#live")).to_have_text("live", timeout=WAIT_MS)
    rcpt = f"reader@{domain}"
    msg = message("Through the pipeline", "Sent via ingest and Kafka.", shipped_html(base), rcpt)
    try:
        async with (
            running_ingest(ks, dns_nameserver, default_pool=pool, trusted_pools=pool) as ingest,
            Running(worker),
        ):
            sent = await asyncio.to_thread(
                smtp_send, ingest.port, "orders@shop.test", [rcpt], msg.as_bytes()
            )
            assert sent.data_reply is not None and sent.data_reply[0] == 250, sent
            rows = page.locator("#messages li")
            # Delivery takes its time (Kafka, the worker's batch): a live arrival, no reload.
            await expect(rows).to_have_count(1, timeout=60_000)
    finally:
        await transport.close()
    await rows.nth(0).click()
    await expect(page.locator("#view-subject")).to_have_text("Through the pipeline")
    greeting = page.frame_locator("#view-html").locator("#greeting")
    await expect(greeting).to_have_text("Hello Bob", timeout=WAIT_MS)
    await expect(page.locator("#view-meta")).to_contain_text(rcpt)
    await page.fill("#search-input", f"to:{domain}")
    await page.press("#search-input", "Enter")
    await expect(rows).to_have_count(1, timeout=WAIT_MS)
    await page.fill("#search-input", "to:nobody.test")
    await page.press("#search-input", "Enter")
    await expect(rows).to_have_count(0, timeout=WAIT_MS)
    await page.click("#search-clear")
    await expect(rows).to_have_count(1, timeout=WAIT_MS)
    await rows.nth(0).click()
    await page.click("#delete")
    await expect(rows).to_have_count(0, timeout=WAIT_MS)
    assert len(sandbox.store) == 0
