"""The audit trail's C fast path (gateway/session/_trail.c) against its Python reference.

The same conversation — prepared statements, named and unnamed portals, pipelines, a
failed pipeline, transactions, multi-statement simple queries, empty queries, portal
suspension, cursors, a refusal, a closed statement, odd command tags — is fed through a
relay with the C walks and through one without, cut into reads at random places (so
that messages also complete in the framer's carry-over buffer, where the Python handler
takes them). Both must forward the same bytes and write the same events, member for
member and in the same order, timestamps aside.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from gateway.policy.baseline import BASELINE
from gateway.policy.cache import DecisionCache
from gateway.policy.engine import Policy
from gateway.session import audit as audit_module
from gateway.session import policy as policy_module
from gateway.session.audit import AuditedHooks
from gateway.session.relay import Relay
from gateway.wire.backend import error_response
from tests.session.test_audit_trail import INFO, Z_IDLE
from tests.session.test_refusal import EXECUTE, SYNC, bind, cstr, parse, replacement_name
from tests.session.test_relay import Sink, msg

Z_TX = msg(b"Z", b"T")
Z_ERROR = msg(b"Z", b"E")
TIMES = ("at", "start", "end", "duration_us")
ROW = msg(b"D", b"\x00\x01\x00\x00\x00\x011")


def slow_path(m: pytest.MonkeyPatch) -> None:
    """No C fast path: what a build without gateway.session._trail does."""
    m.setattr(audit_module, "ACCELERATED", False)
    m.setattr(policy_module, "ACCELERATED", False)
    m.setattr(audit_module, "_Pending", audit_module._PyPending)
    # the pending queue and the portals as plain Python objects (deque, dict)
    m.setattr(audit_module, "_trail", None)


def simple_select(aid: int) -> bytes:
    return msg(b"Q", cstr(f"SELECT abalance FROM pgbench_accounts\n\tWHERE aid = {aid};"))


SIMPLE_ANSWER = msg(b"T", b"\x00\x00") + ROW + msg(b"C", cstr("SELECT 1")) + msg(b"Z", b"I")


def queries_seen_by(cls: type, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The texts of the Queries that reach ``cls.on_query`` (Python) from now on."""
    seen: list[bytes] = []
    original = cls.on_query  # type: ignore[attr-defined]

    def watched(self: object, sql: bytes) -> object:
        seen.append(sql)
        return original(self, sql)

    monkeypatch.setattr(cls, "on_query", watched)
    return seen


def complete(tag: str) -> bytes:
    return msg(b"C", cstr(tag))


def execute(portal: str = "", rows: int = 0) -> bytes:
    return msg(b"E", cstr(portal) + rows.to_bytes(4, "big"))


def close_statement(name: str) -> bytes:
    return msg(b"C", b"S" + cstr(name))


def refused_error(server: Sink) -> bytes:
    name = replacement_name(server.bytes())
    return error_response("26000", f'prepared statement "{name}" does not exist')


# (side, bytes or a function of the server sink) in the order a real session has them.
Step = tuple[str, "bytes | Callable[[Sink], bytes]"]
CONVERSATION: list[Step] = [
    ("c", parse("s1", "SELECT v FROM t WHERE id = $1") + SYNC),
    ("s", msg(b"1") + Z_IDLE),
    ("c", (bind("", "s1") + EXECUTE + SYNC) * 2),
    ("s", (msg(b"2") + ROW + complete("SELECT 1") + Z_IDLE) * 2),
    ("c", bind("p", "s1") + msg(b"D", b"P" + cstr("p")) + execute("p") + SYNC),
    ("s", msg(b"2") + msg(b"T", b"\x00\x00") + ROW + ROW + complete("SELECT 2") + Z_IDLE),
    ("c", msg(b"Q", cstr("UPDATE t SET v = 1 WHERE id < 3; SELECT 1"))),
    ("s", complete("UPDATE 2") + msg(b"T", b"\x00\x00") + ROW + complete("SELECT 1")
     + Z_IDLE),
    ("c", msg(b"Q", cstr("BEGIN"))),
    ("s", complete("BEGIN") + Z_TX),
    ("c", bind("", "s1") + EXECUTE + SYNC),
    ("s", msg(b"2") + ROW + complete("SELECT 1") + Z_TX),
    ("c", msg(b"Q", cstr("COMMIT"))),
    ("s", complete("COMMIT") + Z_IDLE),
    ("c", parse("a", "SELECT 1/0") + parse("b", "SELECT 2")
     + bind("", "a") + EXECUTE + bind("", "b") + EXECUTE + SYNC),
    ("s", msg(b"1") + msg(b"1") + msg(b"2") + error_response("22012", "division by zero")
     + Z_IDLE),
    ("c", bind("", "s1") + execute("", 1) + SYNC),
    ("s", msg(b"2") + ROW + msg(b"s") + Z_IDLE),
    ("c", msg(b"Q", cstr(""))),
    ("s", msg(b"I") + Z_IDLE),
    ("c", bind("", "b") + EXECUTE + SYNC),
    ("s", msg(b"2") + complete('ODD "TAG" 7') + Z_IDLE),
    ("c", bind("", "b") + EXECUTE + SYNC),
    ("s", msg(b"2") + complete("SELECT 123456789012345678901234567890") + Z_IDLE),
    ("c", msg(b"Q", cstr("SELECT 1/0"))),
    ("s", error_response("22012", "division by zero") + Z_IDLE),
    ("c", msg(b"Q", cstr("DECLARE c CURSOR WITH HOLD FOR SELECT 1"))),
    ("s", complete("DECLARE CURSOR") + Z_IDLE),
    ("c", execute("c") + SYNC),
    ("s", ROW + complete("FETCH 1") + Z_IDLE),
    ("c", close_statement("s1") + SYNC),
    ("s", msg(b"3") + Z_IDLE),
    ("c", bind("", "s1") + EXECUTE + SYNC),
    ("s", error_response("26000", 'prepared statement "s1" does not exist') + Z_IDLE),
    ("c", msg(b"Q", cstr("DROP TABLE accounts"))),
    ("s", refused_error),
    ("s", Z_IDLE),
    ("c", parse("x", "DELETE FROM t") + bind("", "x") + EXECUTE + SYNC),
    ("s", refused_error),
    ("s", Z_IDLE),
    ("c", bind("", "b") + EXECUTE + SYNC),
    ("s", msg(b"2") + complete("SELECT 1") + Z_IDLE),
    # the unnamed statement parsed again with another text between two Binds of it
    ("c", parse("", "SELECT 'first'") + bind("", "") + EXECUTE + SYNC),
    ("s", msg(b"1") + msg(b"2") + ROW + complete("SELECT 1") + Z_IDLE),
    ("c", bind("", "") + EXECUTE + SYNC),
    ("s", msg(b"2") + ROW + complete("SELECT 1") + Z_IDLE),
    ("c", parse("", "SELECT 'second'") + bind("", "") + EXECUTE + SYNC),
    ("s", msg(b"1") + msg(b"2") + ROW + complete("SELECT 1") + Z_IDLE),
    # the unnamed portal is gone with its transaction: executed again, it is not the
    # statement it was bound to
    ("c", EXECUTE + SYNC),
    ("s", error_response("34000", 'portal "" does not exist') + Z_IDLE),
    # named and unnamed portals of one transaction, executed after a later Bind
    ("c", msg(b"Q", cstr("BEGIN"))),
    ("s", complete("BEGIN") + Z_TX),
    ("c", bind("", "a") + bind("q", "b") + SYNC),
    ("s", msg(b"2") + msg(b"2") + Z_TX),
    ("c", execute("q") + EXECUTE + SYNC),
    ("s", ROW + complete("SELECT 1") + error_response("22012", "division by zero")
     + Z_ERROR),
    ("c", msg(b"Q", cstr("ROLLBACK"))),
    ("s", complete("ROLLBACK") + Z_IDLE),
    ("c", execute("q") + SYNC),
    ("s", error_response("34000", 'portal "q" does not exist') + Z_IDLE),
    # pgbench -S in simple mode: a new constant each time (the shape tier's case)
    *[step for aid in (17, 4242, 99, 100000, 5) for step in (
        ("c", simple_select(aid)), ("s", SIMPLE_ANSWER))],
    ("c", simple_select(7) + simple_select(8)),
    ("s", SIMPLE_ANSWER),
    ("s", error_response("57014", "canceling statement due to user request") + Z_IDLE),
    ("c", msg(b"Q", cstr("SELECT pg_sleep(10)"))),
]


def run(accelerated: bool, seed: int, monkeypatch: pytest.MonkeyPatch) -> tuple[
    list[list[tuple[str, object]]], bytes, bytes, int
]:
    with monkeypatch.context() as m:
        if not accelerated:
            slow_path(m)
        raw: list[bytes] = []

        def emit(event: object) -> None:
            raw.append(event if isinstance(event, bytes) else msgspec.json.encode(event))

        hooks = AuditedHooks(DecisionCache(Policy(BASELINE)), INFO, {}, emit)
        client, server = Sink(), Sink()
        relay = Relay(client, server, hooks)
        rng = random.Random(seed)
        for side, step in CONVERSATION:
            data = step(server) if callable(step) else step
            feed = relay.client_data if side == "c" else relay.server_data
            pos = 0
            while pos < len(data):
                # whole reads mostly, sometimes cut anywhere
                cut = len(data) if rng.random() < 0.5 else rng.randint(pos + 1, len(data))
                feed(data[pos:cut])
                pos = cut
        relay.close("client disconnected")
        statements = hooks.statements
    events = []
    for b in raw:
        b = re.sub(rb"pgwarden_refused_[0-9a-f]+", b"pgwarden_refused_N", b)
        members = list(msgspec.json.decode(b).items())
        events.append([(k, 0 if k in TIMES else v) for k, v in members])
    # refusal nonces differ between runs: compare what the server got without them
    sent = re.sub(rb"pgwarden_refused_[0-9a-f]+", b"pgwarden_refused_N", server.bytes())
    received = re.sub(rb"pgwarden_refused_[0-9a-f]+", b"pgwarden_refused_N", client.bytes())
    return events, received, sent, statements


@pytest.mark.parametrize("seed", range(25))
def test_c_fast_path_writes_what_the_python_trail_writes(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert audit_module.ACCELERATED, "gateway.session._trail was not built"
    fast = run(True, seed, monkeypatch)
    slow = run(False, seed, monkeypatch)
    assert fast[0] == slow[0]
    assert fast[1:] == slow[1:]
    events = fast[0]
    # the conversation is worth checking: every kind of outcome is in it
    tags = [dict(e)["command_tag"] for e in events]
    assert 'ODD "TAG" 7' in tags and "SUSPENDED" in tags and "FETCH 1" in tags
    assert {dict(e)["sqlstate"] for e in events} >= {"", "22012", "26000", "42501", "08006",
                                                     "57014"}
    texts = [dict(e)["text"] for e in events]
    assert texts.count("SELECT 'first'") == 2 and texts.count("SELECT 'second'") == 1
    assert texts.count("<execute portal ''>") == 2 and texts.count("<execute portal 'q'>") == 1
    assert len(events) == fast[3] == 37


def test_event_bytes_are_identical_apart_from_the_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Member order and formatting too, not only the decoded values."""
    outs = []
    for accelerated in (True, False):
        with monkeypatch.context() as m:
            if not accelerated:
                slow_path(m)
            m.setattr(audit_module, "_now", lambda: 1_700_000_000_000_000_000)
            raw: list[bytes] = []
            hooks = AuditedHooks(DecisionCache(Policy(BASELINE)), INFO, {},
                                 lambda e, into=raw: into.append(bytes(e)))
            relay = Relay(Sink(), Sink(), hooks)
            relay.client_data(parse("s", "SELECT $1") + SYNC)
            relay.server_data(msg(b"1") + Z_IDLE)
            relay.client_data(bind("", "s") + EXECUTE + SYNC)
            relay.server_data(msg(b"2") + ROW + complete("SELECT 1") + Z_IDLE)
            (event,) = raw
            outs.append(event)
    fast, slow = (msgspec.json.decode(e) for e in outs)
    for key in TIMES:
        fast[key] = slow[key] = 0
    assert list(fast.items()) == list(slow.items())


def test_plain_executions_do_not_call_back_into_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The point of the fast path: Bind, Execute, CommandComplete and ReadyForQuery of a
    prepared statement's execution are recorded without any hook method running."""
    assert audit_module.ACCELERATED, "gateway.session._trail was not built"
    raw: list[bytes] = []
    hooks = AuditedHooks(DecisionCache(Policy(BASELINE)), INFO, {},
                         lambda e: raw.append(bytes(e)))
    relay = Relay(Sink(), Sink(), hooks)
    relay.client_data(parse("s", "SELECT $1") + SYNC)
    relay.server_data(msg(b"1") + Z_IDLE)

    def called(*args: object) -> None:
        raise AssertionError("a hook method ran")

    for name in ("on_bind", "on_execute", "on_complete", "on_ready"):
        monkeypatch.setattr(AuditedHooks, name, called)
    for _ in range(3):
        relay.client_data(bind("", "s") + EXECUTE + SYNC)
        relay.server_data(msg(b"2") + ROW + complete("SELECT 1") + Z_IDLE)
    assert len(raw) == 3 and hooks.statements == 3


def test_repeated_simple_queries_do_not_call_back_into_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the decision cache served a query's shape, later queries of that shape are
    decided and recorded by the C walks."""
    assert audit_module.ACCELERATED, "gateway.session._trail was not built"
    raw: list[bytes] = []
    cache = DecisionCache(Policy(BASELINE))
    hooks = AuditedHooks(cache, INFO, {}, lambda e: raw.append(bytes(e)))
    relay = Relay(Sink(), Sink(), hooks)
    for aid in (1, 2):  # parsed, then served by the shape tier (and remembered)
        relay.client_data(simple_select(aid))
        relay.server_data(SIMPLE_ANSWER)

    def called(*args: object) -> None:
        raise AssertionError("a hook method ran")

    for name in ("on_query", "on_complete", "on_ready"):
        monkeypatch.setattr(AuditedHooks, name, called)
    hits = cache.shape_hits
    for aid in (3, 4, 5):
        relay.client_data(simple_select(aid))
        relay.server_data(SIMPLE_ANSWER)
    assert cache.shape_hits == hits + 3
    texts = [msgspec.json.decode(e)["text"] for e in raw]
    assert texts[-1] == "SELECT abalance FROM pgbench_accounts\n\tWHERE aid = 5;"
    assert len(raw) == 5 and hooks.statements == 5


def test_fast_path_never_serves_a_text_without_a_remembered_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attack on the fast path: texts that look like an allowed one but are another
    statement (or have another shape) always reach the policy engine, and the dangerous
    ones are refused."""
    assert audit_module.ACCELERATED, "gateway.session._trail was not built"
    cache = DecisionCache(Policy(BASELINE))
    hooks = AuditedHooks(cache, INFO, {}, lambda e: None)
    server = Sink()
    relay = Relay(Sink(), server, hooks)
    for aid in (1, 2):
        relay.client_data(simple_select(aid))
        relay.server_data(SIMPLE_ANSWER)
    seen = queries_seen_by(AuditedHooks, monkeypatch)
    base = "SELECT abalance FROM pgbench_accounts\n\tWHERE aid = "
    attacks = [
        base + "5; DELETE FROM t;",  # a second statement
        base + "5; UPDATE pgbench_accounts SET abalance = 0;",
        base + "5 OR pg_read_file('x') = '';",  # a function call
        base + "5;--",  # a comment
        base + "'5'::text;",  # another shape
        base + "5 ;",
        "select abalance FROM pgbench_accounts\n\tWHERE aid = 5;",  # case
    ]
    for attack in attacks:
        before = len(server.bytes())
        relay.client_data(msg(b"Q", cstr(attack)))
        assert seen[-1] == attack.encode(), attack
        if "DELETE" in attack or "UPDATE" in attack or "pg_read_file" in attack:
            assert b"pgwarden_refused_" in server.bytes()[before:], attack
            relay.server_data(refused_error(server) + Z_IDLE)
        else:
            relay.server_data(SIMPLE_ANSWER)
    assert len(seen) == len(attacks)


def test_policy_only_sessions_serve_remembered_shapes_until_a_reload_or_unsafe_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.session.policy import PolicyHooks

    assert policy_module.ACCELERATED, "gateway.session._trail was not built"
    cache = DecisionCache(Policy(BASELINE))
    hooks = PolicyHooks(cache, "etl", "ci:repo", "appdb", {})
    server = Sink()
    relay = Relay(Sink(), server, hooks)
    seen = queries_seen_by(PolicyHooks, monkeypatch)
    for aid in range(6):
        relay.client_data(simple_select(aid))
        relay.server_data(SIMPLE_ANSWER)
    assert len(seen) == 2  # parsed, then served by the cache's shape tier; then in C
    assert relay.pending == 0 and server.bytes().count(b"pgbench_accounts") == 6
    cache.invalidate(Policy(BASELINE))  # a new policy version: decided afresh
    relay.client_data(simple_select(6))
    relay.server_data(SIMPLE_ANSWER)
    assert len(seen) == 3
    relay.client_data(simple_select(7))
    relay.server_data(SIMPLE_ANSWER)
    relay.client_data(simple_select(8))
    relay.server_data(SIMPLE_ANSWER)
    assert len(seen) == 4  # remembered again under the new version
    # the server reports an encoding pgwarden cannot inspect: nothing is served any more
    relay.server_data(msg(b"S", cstr("client_encoding") + cstr("SJIS")))
    before = len(server.bytes())
    relay.client_data(simple_select(9))
    assert len(seen) == 5 and b"pgwarden_refused_" in server.bytes()[before:]


def _writer_run(tmp_path: Path, accelerated: bool, monkeypatch: pytest.MonkeyPatch) -> list[
    dict[str, object]
]:
    """The conversation's prepared executions through AuditedHooks wired to a real
    AuditWriter as the server wires it (emit and the writer as the fast path's sink),
    sealed into the spool and read back verified."""
    from nacl.signing import SigningKey

    from gateway.audit import AuditWriter, StatementEvent, Verifier, read_spool
    from gateway.audit.keys import key_id
    from tests.audit.helpers import GATEWAY, audit_config, spool_dir

    key = SigningKey(bytes(range(3, 35)))
    cfg = audit_config(tmp_path / ("fast" if accelerated else "slow"), flush_events=4)
    emitted: list[object] = []

    async def main() -> None:
        w = AuditWriter(cfg, GATEWAY, 0, key)
        await w.start()
        with monkeypatch.context() as m:
            if not accelerated:
                slow_path(m)
            def emit(event: object) -> None:
                emitted.append(event)
                w.emit(event)  # type: ignore[arg-type]

            hooks = AuditedHooks(DecisionCache(Policy(BASELINE)), INFO, {}, emit, gate=w)
            relay = Relay(Sink(), Sink(), hooks)
            relay.client_data(parse("s", "SELECT $1") + SYNC)
            relay.server_data(msg(b"1") + Z_IDLE)
            for i in range(10):
                relay.client_data(bind("", "s") + EXECUTE + SYNC)
                relay.server_data(msg(b"2") + ROW + complete(f"SELECT {i}") + Z_IDLE)
                if i % 3 == 0:
                    await asyncio.sleep(0)  # let a full batch be sealed meanwhile
            for aid in range(5):
                relay.client_data(simple_select(aid))
                relay.server_data(SIMPLE_ANSWER)
            relay.close("done")
        await w.close()

    asyncio.run(main())
    verifier = Verifier({key_id(key.verify_key): key.verify_key})
    events: list[dict[str, object]] = []
    for item in read_spool(spool_dir(Path(cfg.spool_dir))):
        accepted = verifier.feed(item)
        assert accepted is not None
        events += [
            {k: v for k, v in msgspec.structs.asdict(e).items() if k not in TIMES}
            for e in accepted.batch.events if isinstance(e, StatementEvent)
        ]
    assert verifier.finish().ok
    # The C path writes the prepared executions' events into the writer's buffer
    # itself; the Python path hands every event to emit.
    through_emit = [e for e in emitted if b'"type":"statement"' in bytes(e)]  # type: ignore[call-overload]
    assert len(through_emit) < 10 if accelerated else len(through_emit) == 15
    return events


def test_events_appended_to_the_writer_directly_are_the_same_verified_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = _writer_run(tmp_path, True, monkeypatch)
    slow = _writer_run(tmp_path, False, monkeypatch)
    assert len(fast) == 15 and fast == slow
    assert [e["command_tag"] for e in fast[:10]] == [f"SELECT {i}" for i in range(10)]


@pytest.mark.parametrize("accelerated", [True, False])
def test_a_full_spool_under_fail_closed_refuses_executions_of_prepared_statements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accelerated: bool
) -> None:
    """Each execution is a statement the log must record: when it cannot (the spool is
    full and audit.on_spool_full is fail_closed), a Bind of an already prepared statement
    is refused like a new Parse or Query, with the fast path or without."""
    from nacl.signing import SigningKey

    from gateway.audit import AuditWriter
    from gateway.server.auditing import SQLSTATE_AUDIT_FULL
    from gateway.session.hooks import Refusal
    from tests.audit.helpers import GATEWAY, audit_config
    from tests.audit.helpers import statement as any_event

    cfg = audit_config(tmp_path)
    received: list[bytes] = []

    async def main() -> None:
        w = AuditWriter(cfg, GATEWAY, 0, SigningKey(bytes(range(4, 36))))
        await w.start()
        with monkeypatch.context() as m:
            if not accelerated:
                slow_path(m)
            hooks = AuditedHooks(
                DecisionCache(Policy(BASELINE)), INFO, {}, w.emit, gate=w,
                admit=lambda: Refusal(SQLSTATE_AUDIT_FULL, "spool full") if w.full else None,
            )
            client, server = Sink(), Sink()
            relay = Relay(client, server, hooks)
            relay.client_data(parse("s", "SELECT $1") + SYNC)
            relay.server_data(msg(b"1") + Z_IDLE)
            relay.client_data(bind("", "s") + EXECUTE + SYNC)
            relay.server_data(msg(b"2") + ROW + complete("SELECT 1") + Z_IDLE)
            assert w.spool is not None
            w.spool.max_bytes = 1  # full from now on
            w.emit(any_event())
            assert w.full and not w.fast_ok
            before = len(server.bytes())
            relay.client_data(bind("", "s") + EXECUTE + SYNC)
            sent = server.bytes()[before:]
            assert b"pgwarden_refused_" in sent and b"B" not in sent[:1]
            relay.server_data(refused_error(server) + Z_IDLE)
            received.append(client.bytes())
            relay.close("done")
            await w.close()

    asyncio.run(main())
    assert b"C" + SQLSTATE_AUDIT_FULL.encode() in received[0]


def test_a_simple_query_recorded_in_c_has_the_text_and_fragment_python_would_make() -> None:
    """The C path keeps a simple query's bytes and makes its text and event fragment only
    when asked (finish() writes the fragment straight into the event): asked, they are
    what _Prepared has for the same statement."""
    assert audit_module.ACCELERATED, "gateway.session._trail was not built"
    from gateway.session import _trail

    hooks = AuditedHooks(DecisionCache(Policy(BASELINE)), INFO, {}, lambda e: None)
    relay = Relay(Sink(), Sink(), hooks)
    for aid in (1, 2):  # parsed, then served by the shape tier (and remembered)
        relay.client_data(simple_select(aid))
        relay.server_data(SIMPLE_ANSWER)
    query = "SELECT abalance FROM pgbench_accounts\n\tWHERE aid = 42;"  # escapes: \n \t
    relay.client_data(msg(b"Q", cstr(query)))
    (pending,) = list(hooks._pending)  # type: ignore[call-overload]
    statement = pending.statement
    assert isinstance(statement, _trail.Statement)
    reference = audit_module._Prepared("simple", query, statement.fingerprint,
                                       statement.decision)
    for _ in range(2):  # made once, then the same object
        assert statement.text == query
        assert statement.fragment == reference.fragment
    assert statement.fragment is statement.fragment
    assert statement.protocol == "simple" and statement.extended is False
