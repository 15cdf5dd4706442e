"""An unsubscribe event names the tenant its scope names: the tenant's webhooks choose it by
`tenant`."""

from __future__ import annotations

import pytest

from mailsluice.consent.tokens import Claim, unsubscribe_event


@pytest.mark.parametrize(
    ("scope", "tenant"),
    [
        ("list:acme/news", "acme"),
        ("tenant:acme", "acme"),
        ("domain:acme.test", ""),
        ("global", ""),
    ],
)
def test_the_event_carries_the_tenant_of_the_scope(scope: str, tenant: str) -> None:
    claim = Claim("ann@example.org", scope, "acme" if tenant else "", "", "acme.test")
    assert unsubscribe_event(claim, "one-click", 1.0).tenant == tenant
