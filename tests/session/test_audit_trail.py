"""The session's audit trail, without sockets: the relay is fed what a client sends and
what PostgreSQL answers, and the statement events are checked one by one.

tests/e2e/test_audit.py shows the same trail end to end, through real clients.
"""

from __future__ import annotations

import msgspec
import pytest

from gateway.audit.events import Event, StatementEvent
from gateway.policy.baseline import BASELINE
from gateway.policy.cache import DecisionCache
from gateway.policy.engine import Policy
from gateway.session import audit as audit_module
from gateway.session import policy as policy_module
from gateway.session.audit import AuditedHooks, SessionInfo, rows_of
from gateway.session.relay import Relay
from gateway.wire.backend import error_response
from tests.session.test_refusal import EXECUTE, SYNC, bind, cstr, parse, replacement_name
from tests.session.test_relay import Sink, msg

INFO = SessionInfo("s1", "ci", "repo:acme/etl", "etl-client", "etl", "app", "appdb",
                   "10.0.0.7:5555", "loader")
Z_IDLE = msg(b"Z", b"I")


@pytest.fixture(autouse=True, params=["c", "python"])
def trail_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every trail test runs with the C fast path (gateway/session/_trail.c) and without."""
    if request.param == "c":
        # Built by `pip install -e .`; its absence is a build failure.
        assert audit_module.ACCELERATED, "gateway.session._trail was not built"
    else:
        monkeypatch.setattr(audit_module, "ACCELERATED", False)
        monkeypatch.setattr(policy_module, "ACCELERATED", False)
        monkeypatch.setattr(audit_module, "_Pending", audit_module._PyPending)
    return str(request.param)


_decoder = msgspec.json.Decoder(Event)
#: Every member of a statement event, as the audit format documents them.
STATEMENT_MEMBERS = {"type", *(f.encode_name for f in msgspec.structs.fields(StatementEvent))}


def make(**kw: bool) -> tuple[Relay, Sink, list[Event]]:
    events: list[Event] = []

    def emit(event: Event | bytes) -> None:
        if isinstance(event, bytes):
            # Written already encoded: it must be a complete statement event.
            members = msgspec.json.decode(event)
            assert set(members) == STATEMENT_MEMBERS, set(members) ^ STATEMENT_MEMBERS
            event = _decoder.decode(event)
        events.append(event)

    hooks = AuditedHooks(DecisionCache(Policy(BASELINE)), INFO, {}, emit, **kw)
    client, server = Sink(), Sink()
    relay = Relay(client, server, hooks)
    return relay, server, events


def statements(events: list[Event]) -> list[StatementEvent]:
    out = [e for e in events if isinstance(e, StatementEvent)]
    assert len(out) == len(events)
    return out


def test_simple_query_event_carries_identity_outcome_and_rows() -> None:
    relay, _, events = make()
    relay.client_data(msg(b"Q", cstr("UPDATE t SET v = 1 WHERE id < 3; SELECT 1")))
    assert events == []  # not complete yet
    relay.server_data(msg(b"C", cstr("UPDATE 2")) + msg(b"T", b"\x00\x00")
                      + msg(b"C", cstr("SELECT 1")) + Z_IDLE)
    (ev,) = statements(events)
    assert (ev.issuer, ev.subject, ev.client_id, ev.role, ev.upstream_user) == (
        "ci", "repo:acme/etl", "etl-client", "etl", "app")
    assert (ev.database, ev.client_addr, ev.application_name) == ("appdb", "10.0.0.7:5555",
                                                                  "loader")
    assert ev.text == "UPDATE t SET v = 1 WHERE id < 3; SELECT 1"
    assert (ev.protocol, ev.decision, ev.rule_ids) == ("simple", "allow", ["default"])
    assert (ev.command_tag, ev.rows, ev.sqlstate) == ("SELECT 1", 3, "")
    assert ev.fingerprint and ev.id == "s1:1" and ev.end >= ev.start
    assert ev.bytes_out > 0 and ev.bytes_in > 0


def test_refused_statement_is_recorded_with_its_rule_and_error_not_double_counted() -> None:
    relay, server, events = make()
    relay.client_data(msg(b"Q", cstr("DROP TABLE accounts")))
    (ev,) = statements(events)
    assert (ev.decision, ev.rule_ids, ev.sqlstate) == ("approve", ["baseline.drop"], "42501")
    assert "requires approval" in ev.error_message and ev.text == "DROP TABLE accounts"
    name = replacement_name(server.bytes())
    relay.server_data(error_response("26000", f'prepared statement "{name}" does not exist')
                      + Z_IDLE)
    assert len(events) == 1


def test_failed_statement_records_the_sqlstate() -> None:
    relay, _, events = make()
    relay.client_data(msg(b"Q", cstr("SELECT 1/0")))
    relay.server_data(error_response("22012", "division by zero") + Z_IDLE)
    (ev,) = statements(events)
    assert (ev.sqlstate, ev.error_message, ev.command_tag) == ("22012", "division by zero", "")


def test_extended_protocol_one_event_per_execution_with_the_prepared_text() -> None:
    relay, _, events = make()
    relay.client_data(parse("s", "SELECT v FROM t WHERE id = $1"))
    for _ in range(3):
        relay.client_data(bind("", "s") + EXECUTE + SYNC)
    relay.server_data(msg(b"1"))
    for _ in range(3):
        relay.server_data(msg(b"2") + msg(b"D", b"\x00\x00") + msg(b"C", cstr("SELECT 1"))
                          + Z_IDLE)
    evs = statements(events)
    assert [e.text for e in evs] == ["SELECT v FROM t WHERE id = $1"] * 3
    assert [e.rows for e in evs] == [1, 1, 1] and {e.protocol for e in evs} == {"extended"}
    assert len({e.id for e in evs}) == 3


def test_pipeline_error_skips_the_rest_of_the_batch() -> None:
    relay, _, events = make()
    relay.client_data(parse("a", "SELECT 1/0") + parse("b", "SELECT 2"))
    relay.client_data(bind("", "a") + EXECUTE + bind("", "b") + EXECUTE + SYNC)
    relay.client_data(bind("", "b") + EXECUTE + SYNC)
    relay.server_data(msg(b"1") + msg(b"1") + msg(b"2")
                      + error_response("22012", "division by zero") + Z_IDLE)
    relay.server_data(msg(b"2") + msg(b"D", b"\x00\x00") + msg(b"C", cstr("SELECT 1")) + Z_IDLE)
    evs = statements(events)
    # the failed execution, then (after Sync) the next batch's; the skipped one is absent
    assert [(e.text, e.sqlstate) for e in evs] == [("SELECT 1/0", "22012"), ("SELECT 2", "")]


def test_refused_parse_is_an_event_and_its_batch_runs_nothing() -> None:
    relay, server, events = make()
    relay.client_data(parse("x", "DELETE FROM t") + bind("", "x") + EXECUTE + SYNC)
    (ev,) = statements(events)
    assert (ev.protocol, ev.decision, ev.rule_ids) == ("extended", "block",
                                                       ["baseline.no_where"])
    name = replacement_name(server.bytes())
    relay.server_data(error_response("26000", f'prepared statement "{name}" does not exist')
                      + Z_IDLE)
    assert len(events) == 1


def test_parameters_only_when_configured_and_normalized_text() -> None:
    relay, _, events = make(record_parameters=True, normalized_text=True)
    relay.client_data(parse("", "SELECT * FROM t WHERE id = $1 AND name = 'x'"))
    body = cstr("") + cstr("") + b"\x00\x00" + b"\x00\x01" + b"\x00\x00\x00\x0242"
    body += b"\x00\x00"
    relay.client_data(msg(b"B", body) + EXECUTE + SYNC)
    relay.server_data(msg(b"1") + msg(b"2") + msg(b"C", cstr("SELECT 0")) + Z_IDLE)
    (ev,) = statements(events)
    assert ev.parameters == ["42"]
    assert "'x'" not in ev.text and "$2" in ev.text
    relay2, _, events2 = make()
    relay2.client_data(parse("", "SELECT $1") + msg(b"B", body) + EXECUTE + SYNC)
    relay2.server_data(msg(b"1") + msg(b"2") + msg(b"C", cstr("SELECT 1")) + Z_IDLE)
    assert statements(events2)[0].parameters is None


def test_statements_in_flight_when_the_session_ends_are_recorded() -> None:
    relay, _, events = make()
    relay.client_data(msg(b"Q", cstr("SELECT pg_sleep(10)")))
    relay.close("client disconnected")
    (ev,) = statements(events)
    assert ev.sqlstate == "08006" and "client disconnected" in ev.error_message


def test_rows_of_command_tags() -> None:
    assert [rows_of(t) for t in ("INSERT 0 5", "UPDATE 3", "SELECT 0", "COPY 10", "BEGIN",
                                 "")] == [5, 3, 0, 10, None, None]


def test_bind_then_execute_after_an_earlier_batch_ended_is_recorded() -> None:
    relay, _, events = make()
    relay.client_data(parse("s", "SELECT 1") + bind("", "s") + EXECUTE + SYNC)
    relay.client_data(bind("p2", "s"))  # bound now, executed after the first batch ends
    relay.server_data(msg(b"1") + msg(b"2") + msg(b"C", cstr("SELECT 1")) + Z_IDLE)
    relay.client_data(msg(b"E", cstr("p2") + b"\x00\x00\x00\x00") + SYNC)
    relay.server_data(msg(b"2") + msg(b"C", cstr("SELECT 1")) + Z_IDLE)
    assert [e.text for e in statements(events)] == ["SELECT 1", "SELECT 1"]


def test_open_statements_are_bounded_and_close_frees_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gateway.session.audit as audit_mod

    monkeypatch.setattr(audit_mod, "MAX_STATEMENTS", 3)
    relay, server, events = make()
    for name in ("a", "b", "c"):
        relay.client_data(parse(name, f"SELECT '{name}'"))
    relay.client_data(parse("d", "SELECT 'd'"))
    (ev,) = statements(events)
    assert (ev.sqlstate, ev.text) == ("54000", "SELECT 'd'")
    assert replacement_name(server.bytes())
    relay.client_data(msg(b"C", b"S" + cstr("a")))  # Close frees a slot
    relay.client_data(parse("d", "SELECT 'd'"))
    assert len(events) == 1
    relay.client_data(bind("", "d") + EXECUTE + SYNC)
    relay.server_data(msg(b"2") + msg(b"C", cstr("SELECT 1")) + Z_IDLE)
    last = statements(events)[-1]
    # the execution, not the earlier refusal: Bind stays watched after a refused name
    # is cleared
    assert (last.text, last.sqlstate, last.rows) == ("SELECT 'd'", "", 1)


def test_execute_of_a_sql_cursor_portal_is_recorded() -> None:
    relay, _, events = make()
    relay.client_data(msg(b"Q", cstr("BEGIN; DECLARE c CURSOR FOR SELECT * FROM t")))
    relay.server_data(msg(b"C", cstr("BEGIN")) + msg(b"C", cstr("DECLARE CURSOR"))
                      + msg(b"Z", b"T"))
    relay.client_data(msg(b"E", cstr("c") + b"\x00\x00\x00\x0a") + SYNC)
    relay.server_data(msg(b"D", b"\x00\x00") + msg(b"s") + msg(b"Z", b"T"))
    evs = statements(events)
    assert [e.text for e in evs] == ["BEGIN; DECLARE c CURSOR FOR SELECT * FROM t",
                                     "<execute portal 'c'>"]
    assert evs[1].rule_ids == ["cursor"] and evs[1].command_tag == "SUSPENDED"
