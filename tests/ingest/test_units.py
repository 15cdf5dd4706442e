"""Unit tests of the ingest's plain functions: addresses, verdicts, MX cache, auth, message."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from support.eventually import eventually
from support.ingest import TRACE
from support.paths import REPO

from mailsluice.ingest import replies
from mailsluice.ingest.addresses import AddressError, parse_path
from mailsluice.ingest.auth import Credentials, hash_password, main, parse_users, verify_password
from mailsluice.ingest.message import normalise_line_endings, prepare_message
from mailsluice.ingest.plan import PoolPolicy, choose_pool, group_by_routing_key
from mailsluice.ingest.protocol import trusted_network_of
from mailsluice.ingest.settings import IngestSettings
from mailsluice.ingest.verdicts import MxCache, judge_recipient
from mailsluice.mx import MxAnswer
from mailsluice.policy.rollup import default_rollup

# --- addresses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "address", "params"),
    [
        ("<user@example.com>", "user@example.com", ""),
        ("<First.Last+tag@Example.COM> SIZE=100", "First.Last+tag@example.com", "SIZE=100"),
        ("user@example.com", "user@example.com", ""),
        ("<o'hara_x-y=z@mail.example.co.uk>", "o'hara_x-y=z@mail.example.co.uk", ""),
    ],
)
def test_valid_paths(arg: str, address: str, params: str) -> None:
    path = parse_path(arg)
    assert (path.address, path.params) == (address, params)


def test_null_reverse_path_only_when_allowed() -> None:
    assert parse_path("<>", allow_null=True).address == ""
    with pytest.raises(AddressError):
        parse_path("<>")


@pytest.mark.parametrize(
    ("arg", "kind"),
    [
        ("<user%victim.example@relay.example>", "relay_trick"),  # percent hack
        ('<"user@victim.example"@relay.example>', "relay_trick"),  # quoted local part
        ('<"joe"@example.com>', "relay_trick"),
        ("<@relay.example,@hop.example:user@victim.example>", "relay_trick"),  # source route
        ("<@relay.example:user@victim.example>", "relay_trick"),
        ("<victim.example!user@relay.example>", "relay_trick"),  # bang path
        ("<victim.example!user>", "relay_trick"),
        ("<user@[192.0.2.1]>", "relay_trick"),  # address literal
        ("<user@[IPv6:2001:db8::1]>", "relay_trick"),
        ("<user@victim.example@relay.example>", "syntax"),  # double @
        ("<user>", "syntax"),
        ("<@example.com>", "relay_trick"),
        ("<user@>", "syntax"),
        ("<user@localhost>", "syntax"),  # not fully qualified
        ("<user@192.0.2.1>", "syntax"),  # bare IP is not a host name
        ("<user@exa_mple.com>", "syntax"),
        ("<user@example.com.>", "syntax"),
        ("<.user@example.com>", "syntax"),
        ("<us..er@example.com>", "syntax"),
        ("<user@example.com", "syntax"),
        ("<user@example.com>junk", "syntax"),
        ("<" + "a" * 65 + "@example.com>", "syntax"),
        ("<usér@example.com>", "syntax"),
        ("<user@-example.com>", "syntax"),
    ],
)
def test_refused_paths(arg: str, kind: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_path(arg)
    assert info.value.kind == kind


# --- verdicts -----------------------------------------------------------------------------------


def fake_dns(answers: dict[str, MxAnswer], calls: list[str] | None = None):
    async def lookup(domain: str) -> MxAnswer:
        if calls is not None:
            calls.append(domain)
        return answers.get(domain, MxAnswer(domain, "nxdomain"))

    return lookup


DNS = {
    "ok.example": MxAnswer("ok.example", "mx", ("mx.ok.example",), 300),
    "gmail.com": MxAnswer("gmail.com", "mx", ("gmail-smtp-in.l.google.com",), 300),
    "implicit.example": MxAnswer("implicit.example", "implicit", ("implicit.example",)),
    "nullmx.example": MxAnswer("nullmx.example", "null_mx", ttl=300),
    "slow.example": MxAnswer("slow.example", "temp_fail", detail="DNS timeout"),
}


async def judge(address: str, accepted: int = 0, suppressed: frozenset[str] = frozenset()):
    return await judge_recipient(
        address,
        accepted_so_far=accepted,
        max_recipients=3,
        is_suppressed=lambda a, _scopes: a.lower() in suppressed,
        mx_lookup=fake_dns(DNS),
        rollup=default_rollup(),
    )


@pytest.mark.parametrize(
    ("address", "reply", "reason", "key"),
    [
        ("a@ok.example", replies.S250_RCPT_OK, "", "ok.example"),
        ("a@gmail.com", replies.S250_RCPT_OK, "", "google"),
        ("a@implicit.example", replies.S250_RCPT_OK, "", "implicit.example"),
        ("a@nullmx.example", replies.S556_NULL_MX, "null_mx", ""),
        ("a@gone.example", replies.S550_NO_DOMAIN, "no_domain", ""),
        ("a@slow.example", replies.S450_DNS_TEMPFAIL, "dns_timeout", ""),
        ("Blocked@OK.example", replies.S550_SUPPRESSED, "suppressed", ""),
    ],
)
async def test_judge_recipient(address: str, reply: str, reason: str, key: str) -> None:
    verdict = await judge(address, suppressed=frozenset({"blocked@ok.example"}))
    assert (verdict.reply, verdict.reason, verdict.routing_key) == (reply, reason, key)
    assert verdict.accepted == (reason == "")


PRIVATE = {
    "lan.example": MxAnswer(
        "lan.example",
        "mx",
        ("a.lan.example", "b.lan.example"),
        300,
        addresses=("10.1.2.3", "127.0.0.5", "169.254.1.1", "100.64.0.9", "fd00::1", "::1"),
    ),
    "mixed.example": MxAnswer(
        "mixed.example", "mx", ("a.mixed.example",), 300, addresses=("10.0.0.1", "8.8.8.8")
    ),
    "mapped.example": MxAnswer(
        "mapped.example", "implicit", ("mapped.example",), addresses=("::ffff:192.168.1.1",)
    ),
    "unknown.example": MxAnswer("unknown.example", "mx", ("mx.unknown.example",), 300),
}


@pytest.mark.parametrize(
    ("domain", "allow_private", "reason"),
    [
        ("lan.example", False, "private_destination"),
        ("mapped.example", False, "private_destination"),
        ("lan.example", True, ""),
        ("mixed.example", False, ""),  # delivery uses the public address
        ("unknown.example", False, ""),  # addresses not known in full: delivery decides
    ],
)
async def test_destinations_with_only_non_global_addresses(
    domain: str, allow_private: bool, reason: str
) -> None:
    verdict = await judge_recipient(
        f"a@{domain}",
        accepted_so_far=0,
        max_recipients=3,
        is_suppressed=lambda a, _scopes: False,
        mx_lookup=fake_dns(PRIVATE),
        rollup=default_rollup(),
        allow_private=allow_private,
    )
    assert verdict.reason == reason
    assert verdict.reply == (replies.S550_PRIVATE_DESTINATION if reason else replies.S250_RCPT_OK)


async def test_too_many_recipients_comes_first() -> None:
    verdict = await judge("a@ok.example", accepted=3)
    assert (verdict.reply, verdict.reason) == (
        replies.S452_TOO_MANY_RECIPIENTS,
        "too_many_recipients",
    )
    assert verdict.reply.startswith("452 4.5.3")


def test_reply_codes_are_the_documented_ones() -> None:
    assert replies.S550_SUPPRESSED.startswith("550 5.7.1 ")
    assert replies.S556_NULL_MX.startswith("556 5.1.10 ")
    assert replies.S550_NO_DOMAIN.startswith("550 5.1.2 ")
    assert replies.S450_DNS_TEMPFAIL.startswith("450 4.4.3 ")
    assert replies.S501_BAD_RECIPIENT.startswith("501 5.1.3 ")
    assert replies.rewrite("552 Error: Too much mail data").startswith("552 5.3.4 ")
    assert replies.rewrite("500 Command line too long").startswith("500 5.5.2 ")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_mx_cache_respects_ttl_and_bounds() -> None:
    calls: list[str] = []
    clock = Clock()
    answers = {
        "a.example": MxAnswer("a.example", "mx", ("mx.a.example",), ttl=30),
        "b.example": MxAnswer("b.example", "mx", ("mx.b.example",), ttl=30),
        "c.example": MxAnswer("c.example", "mx", ("mx.c.example",), ttl=30),
    }
    cache = MxCache(fake_dns(answers, calls), max_entries=2, max_ttl_s=300, clock=clock)
    for _ in range(100):
        assert (await cache("A.example.")).kind == "mx"
    assert calls == ["a.example"]
    clock.now += 31
    await cache("a.example")
    assert calls == ["a.example", "a.example"]
    await cache("b.example")
    await cache("c.example")  # evicts a (least recently used)
    assert len(cache) == 2
    await cache("a.example")
    assert calls.count("a.example") == 3


async def test_mx_cache_caps_ttl_and_keeps_temp_failures_briefly() -> None:
    clock = Clock()
    cache = MxCache(fake_dns(DNS), max_ttl_s=100, clock=clock)
    assert cache.ttl_for(MxAnswer("x", "mx", ("h",), ttl=86400)) == 100
    assert cache.ttl_for(MxAnswer("x", "temp_fail")) == 5
    assert cache.ttl_for(MxAnswer("x", "nxdomain")) == 60


async def test_mx_cache_shares_one_lookup_between_concurrent_callers() -> None:
    calls: list[str] = []
    gate = asyncio.Event()

    async def slow(domain: str) -> MxAnswer:
        calls.append(domain)
        await gate.wait()
        return MxAnswer(domain, "mx", ("mx",), 60)

    cache = MxCache(slow)
    tasks = [asyncio.create_task(cache("x.example")) for _ in range(10)]
    # Tasks start in creation order: once the first is in the lookup, all ten have asked.
    await eventually(lambda: calls, within=5, what="the lookup started")
    gate.set()
    results = await asyncio.gather(*tasks)
    assert calls == ["x.example"]
    assert all(r.kind == "mx" for r in results)


# --- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["scrypt", "pbkdf2_sha256"])
def test_password_hashes_verify_and_are_salted(scheme: str) -> None:
    one = hash_password("s3cret", scheme=scheme)
    two = hash_password("s3cret", scheme=scheme)
    assert one != two
    assert one.startswith(scheme + "$")
    assert verify_password("s3cret", one) and verify_password("s3cret", two)
    assert not verify_password("s3cret!", one)
    assert not verify_password("", one)


@pytest.mark.parametrize("bad", ["", "plain", "scrypt$1$2", "md5$abc$def", "scrypt$x$8$1$a$b"])
def test_malformed_hashes_never_verify(bad: str) -> None:
    assert not verify_password("anything", bad)


def test_credentials_file_yaml_json_and_reload(tmp_path) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(
        "users:\n"
        f"  app1:\n    password: '{hash_password('pw1')}'\n"
        "    pools: [default, bulk]\n    default_pool: bulk\n"
    )
    creds = Credentials(str(path))
    user = creds.authenticate("app1", "pw1")
    assert user is not None and user.default_pool == "bulk" and user.pools == ("default", "bulk")
    assert creds.authenticate("app1", "wrong") is None
    assert creds.authenticate("nobody", "pw1") is None
    assert creds.pools() == {"default", "bulk"}
    # a Secret update rewrites the file: the new users apply without a restart
    path.write_text(
        json.dumps({"app2": {"password": hash_password("pw2", scheme="pbkdf2_sha256")}})
    )
    import os

    os.utime(path, (1, 1))
    assert creds.authenticate("app2", "pw2") is not None
    assert creds.authenticate("app1", "pw1") is None


@pytest.mark.parametrize(
    "data",
    [
        ["not", "a", "mapping"],
        {"u": {"pools": ["default"]}},
        {"u": {"password": "plaintext"}},
        {"u": {"password": "scrypt$...", "pools": ["a"], "default_pool": "b"}},
    ],
)
def test_invalid_credentials_are_refused(data) -> None:
    with pytest.raises(ValueError):
        parse_users(data, "default")


def test_hash_command(monkeypatch, capsys) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("hunter2\n"))
    assert main(["hash"]) == 0
    out = capsys.readouterr().out.strip()
    assert verify_password("hunter2", out)
    assert main([]) == 2


# --- pools, grouping, networks -----------------------------------------------------------------


def test_choose_pool() -> None:
    from mailsluice.ingest.auth import User

    policy = PoolPolicy(
        "X-Mailsluice-Pool",
        "default",
        frozenset({"default"}),
        frozenset({"default", "bulk", "vip"}),
    )
    user = User("u", "x", ("bulk", "vip"), "bulk")
    assert choose_pool(None, None, policy) == "default"
    assert choose_pool("default", None, policy) == "default"
    assert choose_pool("bulk", None, policy) is None  # trusted networks: only trusted pools
    assert choose_pool(None, user, policy) == "bulk"
    assert choose_pool(" VIP ", user, policy) == "vip"
    assert choose_pool("default", user, policy) is None  # not one of the user's pools
    assert choose_pool("../etc", user, policy) is None


def test_group_by_routing_key_keeps_rcpt_order() -> None:
    routing = {"a@gmail.com": "google", "b@x.example": "x.example", "c@googlemail.com": "google"}
    assert group_by_routing_key(routing) == {
        "google": ["a@gmail.com", "c@googlemail.com"],
        "x.example": ["b@x.example"],
    }


def test_trusted_networks() -> None:
    nets = tuple(IngestSettings().networks())
    assert trusted_network_of("127.0.0.1", nets) == "127.0.0.0/8"
    assert trusted_network_of("::1", nets) == "::1/128"
    assert trusted_network_of("::ffff:127.0.0.9", nets) == "127.0.0.0/8"
    assert trusted_network_of("192.0.2.1", nets) == ""
    assert trusted_network_of("garbage", nets) == ""


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MAILSLUICE_INGEST_TRUSTED_NETWORKS", "10.0.0.0/33"),
        ("MAILSLUICE_INGEST_LISTEN_PORT", "70000"),
        ("MAILSLUICE_INGEST_DEFAULT_POOL", "Bad Pool"),
        ("MAILSLUICE_INGEST_POOL_HEADER", "X Bad: header"),
        ("MAILSLUICE_INGEST_TLS_CERT_FILE", "/only/cert.pem"),
    ],
)
def test_bad_settings_are_refused(monkeypatch, var: str, value: str) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        IngestSettings()


# --- message ------------------------------------------------------------------------------------


def test_bare_line_ends_become_crlf() -> None:
    assert normalise_line_endings(b"a\nb\rc\r\nd\r\r\n") == b"a\r\nb\r\nc\r\nd\r\n\r\n"


def test_prepare_adds_missing_headers_and_strips_the_pool_header() -> None:
    raw = b"Subject: hi\nX-Mailsluice-Pool: bulk\n  continued\nFrom: a@b.example\n\nbody\n"
    out = prepare_message(raw, TRACE, pool_header="X-Mailsluice-Pool")
    assert out.pool == "bulk  continued"  # unfolding removes only the CRLF
    text = out.data.decode()
    assert "X-Mailsluice-Pool" not in text and "continued" not in text
    assert text.startswith("Received: from client.example??X-Injected:?yes ([127.0.0.1])\r\n")
    assert "\r\nX-Injected" not in text
    assert "with ESMTP id 01ABC" in text and "for <a@x.example>" in text
    assert "\r\nMessage-ID: <01ABC@mx.test>\r\n" in text
    assert "\r\nDate: Thu, 01 Jan 1970 00:00:00 +0000\r\n" in text
    assert text.endswith("\r\n\r\nbody\r\n")
    assert "\n" not in text.replace("\r\n", "")


def test_prepare_keeps_existing_message_id_and_date() -> None:
    raw = b"Message-ID: <m@x>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nbody\r\n"
    text = prepare_message(raw, TRACE, pool_header="X-Mailsluice-Pool").data.decode()
    assert text.count("Message-ID") == 1 and text.count("Date:") == 1
    assert text.endswith(
        "Message-ID: <m@x>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nbody\r\n"
    )


def test_prepare_message_without_header() -> None:
    out = prepare_message(b"just a body\r\n", TRACE, pool_header="X-Mailsluice-Pool")
    assert out.pool is None and out.stream is None
    assert out.data.endswith(b"\r\n\r\njust a body\r\n")


def test_bad_setting_exits_2_before_listening() -> None:
    env = {**os.environ, "MAILSLUICE_INGEST_MAX_RECIPIENTS": "lots"}
    done = subprocess.run(
        [sys.executable, "-m", "mailsluice.cli", "ingest"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 2
    assert "MAILSLUICE_INGEST_MAX_RECIPIENTS" in done.stderr
