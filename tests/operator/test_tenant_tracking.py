"""A SendingTenant's `tracking` default: in the CRD's schema (an enum), rendered into the
tenants file entry that the tenancy model reads; absent, the entry has none."""

from __future__ import annotations

import pytest

from mailsluice.tenancy.model import TenancyError, parse_tenants
from mailsluice_operator.tenant_render import entry_of
from mailsluice_operator.tenant_spec import SPEC_SCHEMA

SPEC = {"pools": ["p"], "domains": ["a.test"]}


def test_the_crd_offers_the_four_choices() -> None:
    assert SPEC_SCHEMA["properties"]["tracking"]["enum"] == ["off", "opens", "clicks", "all"]


def test_the_entry_carries_it_and_the_tenancy_model_reads_it() -> None:
    entry = entry_of({**SPEC, "tracking": "clicks"}, {})
    assert entry["tracking"] == "clicks"
    assert parse_tenants({"acme": entry})["acme"].tracking == "clicks"
    plain = entry_of(SPEC, {})
    assert "tracking" not in plain and parse_tenants({"acme": plain})["acme"].tracking is None


def test_the_tenants_file_refuses_an_unknown_choice() -> None:
    with pytest.raises(TenancyError, match="tracking"):
        parse_tenants({"acme": {**SPEC, "tracking": "sometimes"}})
