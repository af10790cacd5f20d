"""Pieces of the audit trail's C fast path (gateway/session/_trail.c) against their
definitions: ``Portals`` behaves as the Python ``_PyPortals`` (it keeps the unnamed
portal in members, apart from the named ones; whatever the mix of names and operations,
every read must give what the dict-based reference gives), and the JSON alphabet check
of a recorded simple query agrees with its byte-by-byte definition.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.session import _trail
from gateway.session import audit as audit_module

NAMES = [b"", b"p", b"q", b"C_1"]


def entry(rng: random.Random) -> tuple[Any, Any, int, int]:
    params = None if rng.random() < 0.7 else ["1", None]
    return (object(), params, rng.randint(5, 500), rng.randint(0, 40))


def snapshot(portals: Any) -> list[tuple[bytes, Any]]:
    return sorted(portals.items(), key=lambda kv: kv[0])


@pytest.mark.parametrize("seed", range(20))
def test_portals_agree_with_the_python_reference(seed: int) -> None:
    rng = random.Random(seed)
    fast, ref = _trail.Portals(), audit_module._PyPortals()
    for _ in range(400):
        name = rng.choice(NAMES)
        op = rng.randrange(8)
        if op in (0, 1):
            value = entry(rng)
            fast[name] = value
            ref[name] = value
        elif op == 2:
            assert fast.pop(name, None) == ref.pop(name, None)
        elif op == 3:
            assert fast.get(name) == ref.get(name)
            assert (name in fast) == (name in ref)
        elif op == 4:
            ended = rng.randint(0, 40)
            fast.end_batches(ended)
            ref.end_batches(ended)
        elif op == 5:
            if name in ref:
                assert fast[name] == ref[name]
                del fast[name]
                del ref[name]
            else:
                with pytest.raises(KeyError):
                    fast[name]
                with pytest.raises(KeyError):
                    del fast[name]
        elif op == 6:
            assert sorted(v[2] for v in fast.values()) == sorted(v[2] for v in ref.values())
        elif rng.random() < 0.1:
            fast.clear()
            ref.clear()
        assert len(fast) == len(ref)
        assert bool(fast) == bool(ref)
        assert snapshot(fast) == snapshot(ref)


def test_unnamed_portal_entry_is_checked() -> None:
    portals: Any = _trail.Portals()
    with pytest.raises(TypeError):
        portals[b""] = ("statement", None, 10)
    with pytest.raises(TypeError):
        portals[b""] = ("statement", None, "ten", 1)
    assert len(portals) == 0 and portals.get(b"") is None
    with pytest.raises(KeyError):
        portals.pop(b"")
    portals[b""] = ("statement", None, 10, 3)
    assert portals.pop(b"") == ("statement", None, 10, 3)
    assert not portals


def test_end_batches_keeps_portals_of_later_batches() -> None:
    both: list[Any] = [_trail.Portals(), audit_module._PyPortals()]
    for portals in both:
        portals[b""] = ("a", None, 10, 5)
        portals[b"p"] = ("b", None, 10, 3)
        portals[b"q"] = ("c", None, 10, 7)
        portals.end_batches(5)
        assert [name for name, _ in portals.items()] == [b"q"]
        portals.end_batches(7)
        assert not portals


def _plain_escapes_reference(text: bytes) -> int:
    escapes = 0
    for c in text:
        if c in b"\t\r\n":
            escapes += 1
        elif c < 0x20 or c > 0x7E or c in b'"\\':
            return -1
    return escapes


@pytest.mark.parametrize("seed", range(10))
def test_the_c_paths_json_alphabet_check_agrees_with_its_definition(seed: int) -> None:
    """The check that lets a simple query's text be written into its event with only
    tabs, CRs and LFs escaped (16 bytes at a time in C): any byte outside that alphabet,
    at any position (in a 16-byte block or in the tail), makes it refuse."""
    rng = random.Random(seed)
    plain = b"SELECT abalance FROM pgbench_accounts WHERE aid = 1234;\t\r\n"
    for _ in range(300):
        text = bytes(rng.choice(plain) for _ in range(rng.randint(0, 80)))
        if text and rng.random() < 0.6:
            pos = rng.randrange(len(text))
            bad = rng.choice([0, 1, 0x1F, 0x7F, 0x80, 0xC3, 0xFF, ord('"'), ord("\\"), 0x0B])
            text = text[:pos] + bytes([bad]) + text[pos + 1 :]
        assert _trail.json_plain_escapes(text) == _plain_escapes_reference(text), text
    assert _trail.json_plain_escapes(b"a\tb" * 20) == 20
    assert _trail.json_plain_escapes(b"x" * 31 + b'"') == -1
