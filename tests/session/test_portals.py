"""The audit trail's bound portals: ``_trail.Portals`` (C) behaves as ``_PyPortals``.

The C type keeps the unnamed portal in members, apart from the named ones; whatever the
mix of names and operations, every read must give what the dict-based reference gives.
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
