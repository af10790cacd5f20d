"""Static client secrets: scrypt hashes of legacy jobs' keys, and their verification.

Owns the stored format ``scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt b64>$<hash b64>`` (standard
base64, padding optional), hashing, constant-time verification, and a small cache of
recently verified (hash, secret) pairs so a job that reconnects often does not pay for
scrypt on every connection.

It does not know where hashes come from (the ``[[clients]]`` table in the configuration),
which principal a client becomes, or anything about connections. It must not import
server or policy. Verification is CPU-bound (~50-100 ms per scrypt call by design), so
callers on an event loop should run a cache miss in an executor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

__all__ = [
    "ScryptHash",
    "VerifiedSecretCache",
    "hash_secret",
    "parse_secret_hash",
    "verify_secret",
]

DEFAULT_LN = 15  # N = 32768: ~32 MiB and ~50-100 ms per check, the usual interactive cost
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32

# Parameters come from an operator's config file, but a typo like ln=40 would allocate
# terabytes at the first login; bound them to what a hash_secret() caller could want.
_LN_RANGE = range(10, 21)
_R_RANGE = range(1, 33)
_P_RANGE = range(1, 17)
_MIN_SALT_BYTES = 8
_MIN_KEY_BYTES = 16

_FORMAT = re.compile(
    r"^scrypt\$ln=(?P<ln>\d+),r=(?P<r>\d+),p=(?P<p>\d+)\$(?P<salt>[A-Za-z0-9+/]+=*)\$(?P<hash>[A-Za-z0-9+/]+=*)$"
)


@dataclass(frozen=True, slots=True)
class ScryptHash:
    """A parsed ``scrypt$...`` string."""

    ln: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def derive(self, candidate: str) -> bytes:
        """scrypt of ``candidate`` under this hash's parameters and salt."""
        n = 1 << self.ln
        # OpenSSL refuses to use more than maxmem (default 32 MiB), and ln=15, r=8 needs
        # exactly 32 MiB plus bookkeeping; allow twice the theoretical need.
        maxmem = 2 * 128 * self.r * n * self.p + (1 << 20)
        return hashlib.scrypt(
            candidate.encode("utf-8"),
            salt=self.salt,
            n=n,
            r=self.r,
            p=self.p,
            maxmem=maxmem,
            dklen=len(self.key),
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    text = text.rstrip("=")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def parse_secret_hash(s: str) -> ScryptHash:
    """Parse a stored hash; raise ``ValueError`` saying what is wrong with it."""
    m = _FORMAT.match(s.strip())
    if m is None:
        raise ValueError(
            "secret_hash must look like 'scrypt$ln=15,r=8,p=1$<salt b64>$<hash b64>' "
            "(generate one with 'pgwarden hash-secret')"
        )
    ln, r, p = int(m["ln"]), int(m["r"]), int(m["p"])
    for name, value, allowed in (("ln", ln, _LN_RANGE), ("r", r, _R_RANGE), ("p", p, _P_RANGE)):
        if value not in allowed:
            raise ValueError(
                f"secret_hash parameter {name}={value} is outside "
                f"{allowed.start}..{allowed.stop - 1}"
            )
    try:
        salt, key = _unb64(m["salt"]), _unb64(m["hash"])
    except (binascii.Error, ValueError):
        raise ValueError("secret_hash salt or hash is not valid base64") from None
    if len(salt) < _MIN_SALT_BYTES:
        raise ValueError(
            f"secret_hash salt is {len(salt)} bytes; at least {_MIN_SALT_BYTES} needed"
        )
    if len(key) < _MIN_KEY_BYTES:
        raise ValueError(f"secret_hash hash is {len(key)} bytes; at least {_MIN_KEY_BYTES} needed")
    return ScryptHash(ln=ln, r=r, p=p, salt=salt, key=key)


def hash_secret(secret: str) -> str:
    """Hash ``secret`` with scrypt (ln=15, r=8, p=1), a random 16-byte salt, 32-byte key."""
    params = ScryptHash(
        ln=DEFAULT_LN, r=DEFAULT_R, p=DEFAULT_P, salt=os.urandom(SALT_BYTES), key=bytes(KEY_BYTES)
    )
    key = params.derive(secret)
    return f"scrypt$ln={params.ln},r={params.r},p={params.p}${_b64(params.salt)}${_b64(key)}"


def verify_secret(stored: str, candidate: str) -> bool:
    """True if ``candidate`` hashes to ``stored``; comparison is constant-time.

    Raises ``ValueError`` if ``stored`` is malformed: configuration loading has already
    rejected such hashes, so reaching one here is a bug, not a wrong password.
    """
    parsed = parse_secret_hash(stored)
    return hmac.compare_digest(parsed.derive(candidate), parsed.key)


class VerifiedSecretCache:
    """Remembers (stored hash, candidate) pairs that verified, as keyed BLAKE2b digests.

    Only successes are cached, so a wrong secret always pays the full scrypt cost and
    brute force gains nothing. Entries are digests under a random per-instance key,
    never the secrets: a memory dump does not reveal them, and the digests cannot be
    attacked offline without the key. Because the key is secret, looking a digest up in a
    dict leaks nothing useful through timing. Bounded LRU; safe to share between
    threads (verification may run in an executor).
    """

    def __init__(self, maxsize: int = 1024) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self._maxsize = maxsize
        self._key = os.urandom(32)
        self._entries: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def _digest(self, stored: str, candidate: str) -> bytes:
        h = hashlib.blake2b(key=self._key, digest_size=32)
        # Length-prefix both parts so ("ab", "c") and ("a", "bc") cannot collide.
        for part in (stored.encode("utf-8"), candidate.encode("utf-8")):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return h.digest()

    def check(self, stored: str, candidate: str) -> bool:
        """True if this pair verified recently; False means "unknown", not "wrong".

        Cheap enough for the event loop; on False run ``verify_secret`` (in an executor)
        and, if it succeeds, ``remember`` the pair.
        """
        digest = self._digest(stored, candidate)
        with self._lock:
            if digest in self._entries:
                self._entries.move_to_end(digest)
                return True
        return False

    def remember(self, stored: str, candidate: str) -> None:
        """Record a pair that ``verify_secret`` has just accepted. Never call it otherwise."""
        digest = self._digest(stored, candidate)
        with self._lock:
            self._entries[digest] = None
            self._entries.move_to_end(digest)
            while len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)

    def verify(self, stored: str, candidate: str) -> bool:
        """``check``, else ``verify_secret`` and ``remember`` on success (blocking)."""
        if self.check(stored, candidate):
            return True
        # scrypt runs outside the lock so concurrent verifications proceed in parallel.
        if not verify_secret(stored, candidate):
            return False
        self.remember(stored, candidate)
        return True

    def clear(self) -> None:
        """Forget every entry (e.g. after the client list is reloaded)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
