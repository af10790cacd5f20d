"""The ECS mapping: every event type maps, and the fields a SIEM rule keys on are right."""

from __future__ import annotations

import json

import msgspec
from nacl.signing import SigningKey

from gateway.audit import AuthFailureEvent, Chain, decode_batch, parse_record, to_ecs
from gateway.audit.ecs import timestamp
from tests.audit.helpers import GATEWAY, statement
from tests.audit.test_batch import every_event_type

KEY = SigningKey(bytes(range(6, 38)))


def header() -> object:
    return decode_batch(parse_record(Chain(KEY, GATEWAY, 2).seal([], "open")))


def test_every_event_type_maps_to_json() -> None:
    for event in every_event_type():
        doc = to_ecs(header(), event)  # type: ignore[arg-type]
        json.loads(msgspec.json.encode(doc))
        assert doc["event"]["action"] == event.__struct_config__.tag
        assert doc["pgwarden"]["audit"]["worker"] == 2
        assert doc["@timestamp"] == timestamp(event.at)


def test_a_blocked_statement() -> None:
    event = statement(decision="block", rule_ids=["no-payroll"], sqlstate="42501",
                      error_message="payroll tables are not available", client_addr="[::1]:6000")
    doc = to_ecs(header(), event)  # type: ignore[arg-type]
    assert doc["event"]["type"] == ["access", "denied"] and doc["event"]["outcome"] == "failure"
    assert doc["event"]["reason"] == "block by no-payroll"
    assert doc["error"] == {"code": "42501", "message": "payroll tables are not available"}
    assert doc["source"]["ip"] == "::1" and doc["source"]["port"] == 6000
    assert doc["user"] == {"name": "repo:acme/etl:ref:refs/heads/main", "domain": "github",
                           "roles": ["etl_loader"]}
    assert doc["event"]["duration"] == 150_000


def test_an_authentication_failure() -> None:
    event = AuthFailureEvent(at=1, reason="bad token", user="job", method="oidc",
                             client_addr="10.0.0.9:1234")
    doc = to_ecs(header(), event)  # type: ignore[arg-type]
    assert doc["event"]["category"] == ["authentication"]
    assert doc["event"]["outcome"] == "failure" and doc["event"]["reason"] == "bad token"
    assert doc["user"] == {"name": "job"} and doc["source"]["ip"] == "10.0.0.9"


def test_timestamps_keep_nanoseconds() -> None:
    assert timestamp(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
