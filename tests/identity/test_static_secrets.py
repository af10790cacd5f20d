"""gateway.identity.static_secrets: scrypt hash format, verification, verified cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading

import pytest

from gateway.identity.static_secrets import (
    VerifiedSecretCache,
    hash_secret,
    parse_secret_hash,
    verify_secret,
)

# scrypt is slow on purpose; hash once per module.
SECRET = "correct horse battery staple"
STORED = hash_secret(SECRET)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def test_hash_format() -> None:
    scheme, params, salt, key = STORED.split("$")
    assert (scheme, params) == ("scrypt", "ln=15,r=8,p=1")
    parsed = parse_secret_hash(STORED)
    assert (parsed.ln, parsed.r, parsed.p) == (15, 8, 1)
    assert len(parsed.salt) == 16
    assert len(parsed.key) == 32
    assert b64(parsed.salt) == salt and b64(parsed.key) == key


def test_hash_matches_hashlib_scrypt() -> None:
    parsed = parse_secret_hash(STORED)
    expected = hashlib.scrypt(
        SECRET.encode(), salt=parsed.salt, n=1 << 15, r=8, p=1, maxmem=64 << 20, dklen=32
    )
    assert expected == parsed.key


def test_salt_is_random() -> None:
    assert hash_secret(SECRET) != STORED


def test_verify_accepts_right_and_rejects_wrong_secret() -> None:
    assert verify_secret(STORED, SECRET)
    assert not verify_secret(STORED, SECRET + " ")
    assert not verify_secret(STORED, "")


def test_unicode_secret() -> None:
    stored = hash_secret("pässwörd-🔑")
    assert verify_secret(stored, "pässwörd-🔑")
    assert not verify_secret(stored, "passwort-🔑")


def test_padding_and_surrounding_whitespace_are_tolerated() -> None:
    scheme, params, salt, key = STORED.split("$")
    padded = "$".join([scheme, params, salt + "=" * (-len(salt) % 4), key + "=" * (-len(key) % 4)])
    assert verify_secret(padded, SECRET)
    assert verify_secret(f"  {STORED}\n", SECRET)


def _tamper(stored: str, part: int) -> str:
    pieces = stored.split("$")
    raw = bytearray(base64.b64decode(pieces[part] + "=" * (-len(pieces[part]) % 4)))
    raw[0] ^= 0x01
    pieces[part] = b64(bytes(raw))
    return "$".join(pieces)


@pytest.mark.parametrize("part", [2, 3], ids=["salt", "hash"])
def test_tampered_hash_is_rejected(part: int) -> None:
    assert not verify_secret(_tamper(STORED, part), SECRET)


def test_tampered_parameters_are_rejected() -> None:
    # Cheaper parameters would let an attacker who can edit the config brute force faster;
    # either way the derived key no longer matches.
    assert not verify_secret(STORED.replace("ln=15", "ln=14"), SECRET)
    assert not verify_secret(STORED.replace("r=8", "r=4"), SECRET)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "must look like"),
        ("plaintext", "must look like"),
        ("bcrypt$2b$12$abc", "must look like"),
        ("scrypt$ln=15,r=8$AAAA$AAAA", "must look like"),
        ("scrypt$ln=40,r=8,p=1$" + b64(bytes(16)) + "$" + b64(bytes(32)), "ln=40"),
        ("scrypt$ln=15,r=0,p=1$" + b64(bytes(16)) + "$" + b64(bytes(32)), "r=0"),
        ("scrypt$ln=15,r=8,p=99$" + b64(bytes(16)) + "$" + b64(bytes(32)), "p=99"),
        ("scrypt$ln=15,r=8,p=1$A$" + b64(bytes(32)), "base64"),
        ("scrypt$ln=15,r=8,p=1$" + b64(bytes(4)) + "$" + b64(bytes(32)), "salt is 4 bytes"),
        ("scrypt$ln=15,r=8,p=1$" + b64(bytes(16)) + "$" + b64(bytes(8)), "hash is 8 bytes"),
    ],
)
def test_parse_errors_are_clear(value: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_secret_hash(value)


def test_verify_raises_on_malformed_stored_hash() -> None:
    with pytest.raises(ValueError):
        verify_secret("not-a-hash", SECRET)


def test_verify_uses_constant_time_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return bool(real(a, b))

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert verify_secret(STORED, SECRET)
    assert len(calls) == 1


# --------------------------------------------------------------------------- cache


def count_scrypt(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    counter = [0]
    real = hashlib.scrypt

    def counting(*args: object, **kwargs: object) -> bytes:
        counter[0] += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hashlib, "scrypt", counting)
    return counter


def test_cache_skips_scrypt_after_success(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = VerifiedSecretCache()
    scrypt_calls = count_scrypt(monkeypatch)
    assert cache.verify(STORED, SECRET)
    assert cache.verify(STORED, SECRET)
    assert cache.check(STORED, SECRET)
    assert scrypt_calls[0] == 1
    assert len(cache) == 1


def test_cache_hit_path_still_rejects_wrong_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = VerifiedSecretCache()
    assert cache.verify(STORED, SECRET)
    scrypt_calls = count_scrypt(monkeypatch)
    assert not cache.verify(STORED, "wrong")
    assert not cache.verify(STORED, SECRET + "x")
    assert not cache.check(STORED, "wrong")
    # Wrong secrets always pay for scrypt and are never remembered.
    assert scrypt_calls[0] == 2
    assert len(cache) == 1


def test_cache_is_per_stored_hash() -> None:
    # Same secret, different (tampered) stored hash: the cached success must not carry over.
    cache = VerifiedSecretCache()
    assert cache.verify(STORED, SECRET)
    assert not cache.check(_tamper(STORED, 3), SECRET)
    assert not cache.verify(_tamper(STORED, 3), SECRET)


def test_cache_does_not_hold_the_secret() -> None:
    cache = VerifiedSecretCache()
    cache.remember(STORED, SECRET)
    held = b"".join(cache._entries)
    assert SECRET.encode() not in held
    assert STORED.encode() not in held


def test_cache_keys_differ_between_instances() -> None:
    a, b = VerifiedSecretCache(), VerifiedSecretCache()
    a.remember(STORED, SECRET)
    b.remember(STORED, SECRET)
    assert list(a._entries) != list(b._entries)


def test_cache_length_prefix_prevents_ambiguity() -> None:
    cache = VerifiedSecretCache()
    cache.remember("ab", "c")
    assert not cache.check("a", "bc")


def test_cache_is_bounded_lru() -> None:
    cache = VerifiedSecretCache(maxsize=3)
    for i in range(3):
        cache.remember(STORED, f"s{i}")
    assert cache.check(STORED, "s0")  # s0 becomes most recently used
    cache.remember(STORED, "s3")  # evicts s1, the least recently used
    assert len(cache) == 3
    assert cache.check(STORED, "s0")
    assert not cache.check(STORED, "s1")
    assert cache.check(STORED, "s2")
    assert cache.check(STORED, "s3")
    cache.clear()
    assert len(cache) == 0
    assert not cache.check(STORED, "s0")


def test_cache_rejects_nonpositive_size() -> None:
    with pytest.raises(ValueError):
        VerifiedSecretCache(maxsize=0)


def test_cache_is_thread_safe() -> None:
    cache = VerifiedSecretCache(maxsize=50)

    def worker(n: int) -> None:
        for i in range(500):
            cache.remember(STORED, f"{n}-{i}")
            cache.check(STORED, f"{n}-{i - 1}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50
