"""Owned sender domains (policy/owners.py): patterns, matching, and the header From check."""

from __future__ import annotations

import pytest

from mailsluice.policy.owners import (
    UNRESTRICTED,
    OwnedDomains,
    OwnersError,
    domain_of,
    from_header_owned,
)

OWNED = OwnedDomains.parse(["tenant-a.test", "*.tenant-a.test", "bücher.test"])


@pytest.mark.parametrize(
    ("address", "owned"),
    [
        ("x@tenant-a.test", True),
        ("x@TENANT-A.test.", True),  # case and a trailing dot do not matter
        ("x@mail.tenant-a.test", True),
        ("x@a.b.tenant-a.test", True),
        ("x@tenant-b.test", False),
        ("x@eviltenant-a.test", False),  # a suffix, not a subdomain
        ("x@tenant-a.test.evil.test", False),
        ("x@xn--bcher-kva.test", True),  # the A-label of bücher.test
        ("x@bücher.test", True),
        ("tenant-a.test", False),  # no local part
        ("x@[192.0.2.1]", False),
        ("", False),
    ],
)
def test_owns_address(address: str, owned: bool) -> None:
    assert OWNED.owns_address(address) is owned


def test_a_wildcard_does_not_own_its_apex() -> None:
    owned = OwnedDomains.parse(["*.tenant-a.test"])
    assert owned.owns_domain("m.tenant-a.test") and not owned.owns_domain("tenant-a.test")


def test_unrestricted_owns_everything_and_an_empty_list_nothing() -> None:
    assert UNRESTRICTED.owns_address("x@any.test")
    assert not OwnedDomains.parse([]).owns_address("x@any.test")


@pytest.mark.parametrize(
    "pattern", ["", "*", "*.", "tenant", "a..test", "-a.test", "a.*.test", "x@a.test"]
)
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(OwnersError):
        OwnedDomains.parse([pattern])


def test_patterns_round_trip() -> None:
    assert OwnedDomains.parse(OWNED.patterns) == OWNED
    assert domain_of("Someone@Tenant-A.Test") == "tenant-a.test"


@pytest.mark.parametrize(
    ("header", "owned"),
    [
        (b"From: a@tenant-a.test\r\n", True),
        (b"From: =?utf-8?q?J=C3=B6rg?= <j@news.tenant-a.test>\r\nTo: b@x.test\r\n", True),
        (b"From: a@tenant-a.test,\r\n b@mail.tenant-a.test\r\n", True),
        (b"Subject: no From claims nothing\r\n", True),
        (b"From: a@tenant-b.test\r\n", False),
        (b"From: a@tenant-a.test, b@tenant-b.test\r\n", False),
        (b'From: "a@tenant-a.test" <b@tenant-b.test>\r\n', False),
        (b"From: a@tenant-a.test\r\nFrom: b@tenant-b.test\r\n", False),  # every From field
        (b"FROM: a@tenant-b.test\r\n", False),
        (b"From: <a@tenant-b.test>@tenant-a.test\r\n", False),  # defective: not proven
        (b"From: undisclosed:;\r\n", False),  # no mailbox
        (b"From:\r\n", False),
        (b"From: a\r\n", False),
        (b"From: a@[192.0.2.1]\r\n", False),
    ],
)
def test_header_from(header: bytes, owned: bool) -> None:
    assert from_header_owned(header, OWNED) is owned


def test_an_unrestricted_owner_skips_the_header() -> None:
    assert from_header_owned(b"From: a@anything.test\r\n", UNRESTRICTED)
