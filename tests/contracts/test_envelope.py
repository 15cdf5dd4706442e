"""The queue envelope stays readable across releases within version 1: `held` is optional, an
older record reads as a failure retry, and an older reader skips what it does not know."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import create_model

from mailsluice.contracts.envelope import VERSION, Envelope, decode_envelope, encode_envelope
from mailsluice.contracts.versioning import NewerSchema, load_versioned

# A retry record as the release before `held` wrote it (fields in its order, no `held`).
OLDER_RECORD = (
    b'{"v":1,"queue_id":"01J0000000000000000000000A","pool":"default","stream":"bulk",'
    b'"sender":"a@x.example","recipients":["b@y.example"],"routing_key":"y.example",'
    b'"received_at":1700000000.0,"attempt":0,"not_before":1700007200.0,'
    b'"last_error":"throttled: destination over its limits","user":""}'
)


def test_a_record_without_held_reads_as_a_failure_retry() -> None:
    env = decode_envelope(OLDER_RECORD)
    assert env.held == ""
    assert env.last_error == "throttled: destination over its limits"
    assert env.not_before == 1700007200.0


def test_held_round_trips_and_stays_version_1() -> None:
    env = decode_envelope(OLDER_RECORD).model_copy(update={"held": "suspended"})
    raw = encode_envelope(env)
    assert json.loads(raw)["v"] == VERSION == 1
    assert decode_envelope(raw) == env


def older_reader() -> type[Any]:
    """The envelope model of a release that knew no `held`: the same fields and settings."""
    fields: dict[str, Any] = {
        name: (info.annotation, info)
        for name, info in Envelope.model_fields.items()
        if name != "held"
    }
    return create_model("OlderEnvelope", __config__=Envelope.model_config, **fields)


def test_an_older_reader_ignores_held() -> None:
    env = decode_envelope(OLDER_RECORD).model_copy(update={"held": "blocked"})
    older = older_reader()
    read = older.model_validate(load_versioned(encode_envelope(env), 1, "envelope"))
    assert not hasattr(read, "held")
    assert read.model_dump() == env.model_dump(exclude={"held"})


def test_a_newer_version_is_refused() -> None:
    newer = json.loads(OLDER_RECORD) | {"v": VERSION + 1}
    with pytest.raises(NewerSchema):
        decode_envelope(json.dumps(newer).encode())
