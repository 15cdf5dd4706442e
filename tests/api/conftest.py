"""The app of the API served over real HTTP with Kafka replaced by a list (support/api.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support.api import Served, app_settings, serve


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with serve(app_settings()) as running:
        yield running
