"""OIDC bearer tokens: JWTs given as the PostgreSQL password, verified into a Principal.

Owns everything between "the password looks like a JWT" and "this is the verified caller":
choosing the configured issuer a token claims to come from, discovery and JWKS fetching
(cached, refreshed on a schedule and on an unknown ``kid``, rate-limited and coalesced),
the algorithm allowlist and key selection, and the translation of every failure into a
:class:`TokenRejected` whose reason is safe to show the client.

Signature and claim checks are PyJWT's (``jwt.decode`` with exactly one algorithm, the
issuer's audiences, exact ``iss``, leeway and required claims); this module never
verifies a signature itself. Its own job is to hand PyJWT the one key that may verify
the token, and nothing the token itself chose:

* the unverified ``iss`` only selects which issuer's configuration and keys to use; the
  token must then verify under *those* keys and carry *that* exact ``iss``;
* ``alg`` must be in the issuer's allowlist; ``none`` never is;
* HS256/384/512 verify only with the issuer's configured shared secret (env or file),
  never with a JWKS or public key (no RS/HS key confusion); asymmetric algorithms verify
  only with a JWKS key whose ``kty``/``crv`` fits the algorithm (``oct`` keys in a JWKS
  are ignored: a network document never supplies an HMAC secret);
* ``jku``, ``x5u``, ``jwk`` and ``x5c`` headers are ignored: keys only ever come from the
  configured issuer's JWKS.

Failures and their SQLSTATEs: a signature that does not verify is ``28P01``
(invalid_password: the credential itself is wrong, like a bad password); everything else
(expired, wrong audience, unknown issuer, disallowed algorithm, malformed token, issuer
keys unavailable) is ``28000`` (invalid_authorization_specification). Reasons never contain
the token; they may name the token's ``iss`` and ``kid`` (truncated, printable only),
which identify a key or issuer but grant nothing, because a mismatched issuer URL
(a trailing slash) is the most common OIDC misconfiguration and must be diagnosable.

Time claims (``exp``, ``nbf``, ``iat``) are checked by PyJWT against the system clock,
and ``iat`` once more against ``clock`` (PyJWT releases before 2.10 only type-check it).
``clock`` also drives the JWKS refresh rate limit.

``allow_insecure_http`` permits ``http://`` discovery and JWKS URLs. It exists for
development against an issuer on loopback (``pgwarden dev issuer``); over any real
network an attacker on the path could substitute the keys.

It must not know about connections, roles or policy, and must not import
``gateway.server`` or ``gateway.policy``. HTTP uses stdlib ``urllib`` in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import ipaddress
import json
import logging
import os
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import jwt
from jwt.algorithms import AllowedPublicKeys

from gateway.config import IssuerConfig
from gateway.identity.principal import Principal

__all__ = [
    "INVALID_AUTHORIZATION",
    "INVALID_PASSWORD",
    "MAX_DOCUMENT_BYTES",
    "OidcVerifier",
    "TokenRejected",
    "looks_like_jwt",
]

log = logging.getLogger(__name__)

INVALID_AUTHORIZATION: Final = "28000"
INVALID_PASSWORD: Final = "28P01"

#: Largest discovery document or JWKS accepted. Real ones are a few KiB; the cap keeps a
#: misbehaving or hostile endpoint from exhausting memory.
MAX_DOCUMENT_BYTES: Final = 1 << 20

#: A shared secret shorter than the HS256 output (RFC 7518 section 3.2) is refused.
MIN_HMAC_SECRET_BYTES: Final = 32
_MAX_SECRET_FILE_BYTES: Final = 64 * 1024

_HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})

# Which JWK may verify which algorithm: (kty, allowed crv values or None for "no crv").
_KEY_FAMILIES: Final[Mapping[str, tuple[str, frozenset[str] | None]]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "ES256K": ("EC", frozenset({"secp256k1"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
# PyJWK needs an algorithm to build a key; any member of the family yields the same key
# object, and the per-token algorithm is checked against the family separately.
_PARSE_AS: Final[Mapping[tuple[str, str | None], str]] = {
    ("RSA", None): "RS256",
    ("EC", "P-256"): "ES256",
    ("EC", "P-384"): "ES384",
    ("EC", "P-521"): "ES512",
    ("EC", "secp256k1"): "ES256K",
    ("OKP", "Ed25519"): "EdDSA",
    ("OKP", "Ed448"): "EdDSA",
}
_PRIVATE_JWK_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

_B64URL: Final = re.compile(r"[A-Za-z0-9_-]+")
_JWT_SHAPE: Final = re.compile(r"([A-Za-z0-9_-]+)\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# looks_like_jwt decodes the header only; no real JOSE header is anywhere near this.
_MAX_HEADER_CHARS: Final = 8192
_MAX_QUOTED_CHARS: Final = 80
_MIN_SCHEDULE_SECONDS: Final = 0.05


class TokenRejected(Exception):
    """A token was refused. ``reason`` is safe to show the client; it never holds the token.

    ``sqlstate`` is ``28P01`` when the signature does not verify and ``28000`` otherwise.
    """

    def __init__(self, reason: str, sqlstate: str = INVALID_AUTHORIZATION) -> None:
        # Both in args, so the exception survives pickling with its SQLSTATE.
        super().__init__(reason, sqlstate)
        self.reason = reason
        self.sqlstate = sqlstate

    def __str__(self) -> str:
        return self.reason


class _FetchError(Exception):
    """Discovery or JWKS could not be loaded; the message names the URL, never a body."""


# --------------------------------------------------------------------------- parsing


def _b64url_decode(segment: str) -> bytes:
    if not _B64URL.fullmatch(segment):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _json_object(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64url_decode(segment))
    except (ValueError, binascii.Error, RecursionError, UnicodeDecodeError):
        raise ValueError("not a base64url JSON segment") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def looks_like_jwt(password: str) -> bool:
    """Cheap structural test: should this password go to OIDC rather than static keys?

    True for three base64url segments (the last may be empty, as in ``alg: none``) whose
    first decodes to a JSON object with an ``alg`` member. Says nothing about validity.
    """
    m = _JWT_SHAPE.fullmatch(password)
    if m is None or len(m.group(1)) > _MAX_HEADER_CHARS:
        return False
    try:
        return "alg" in _json_object(m.group(1))
    except ValueError:
        return False


def _unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload, unverified: used only to pick the issuer, algorithm and key."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenRejected("malformed token")
    try:
        return _json_object(parts[0]), _json_object(parts[1])
    except ValueError:
        raise TokenRejected("malformed token") from None


def _quote(value: str) -> str:
    """A token-supplied name (iss, kid) made safe for a message: printable and short."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in value[:_MAX_QUOTED_CHARS])
    suffix = "..." if len(value) > _MAX_QUOTED_CHARS else ""
    return repr(cleaned + suffix)


def _token_size(token: str) -> int:
    """Size in UTF-8 bytes (a lone surrogate counts as the 3 bytes it would take)."""
    return len(token) if token.isascii() else len(token.encode("utf-8", "surrogatepass"))


def _when(value: object, preposition: str) -> str:
    """``" <preposition> <RFC 3339 time>"`` for a numeric claim value, else nothing."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    try:
        moment = dt.datetime.fromtimestamp(value, dt.UTC)
    except (ValueError, OverflowError, OSError):
        return ""
    return f" {preposition} {moment:%Y-%m-%dT%H:%M:%SZ}"


# --------------------------------------------------------------------------- HTTP


def _check_url(url: str, allow_http: bool) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "https" or (scheme == "http" and allow_http):
        return
    if scheme == "http":
        raise _FetchError(f"{url}: plain http is refused (allow_insecure_http is off)")
    raise _FetchError(f"{url}: only https URLs are fetched")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to URLs that are themselves acceptable (no https -> http)."""

    def __init__(self, allow_http: bool) -> None:
        super().__init__()
        self._allow_http = allow_http

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        _check_url(newurl, self._allow_http)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch_json(url: str, *, timeout: float, allow_http: bool, limit: int) -> dict[str, Any]:
    """GET ``url`` and parse a JSON object. Blocking: run it in a thread.

    ``timeout`` bounds each socket operation and, checked between reads, the whole body,
    so an endpoint trickling bytes cannot hold a thread for long.
    """
    _check_url(url, allow_http)
    opener = urllib.request.build_opener(_CheckedRedirects(allow_http))
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "pgwarden"}
    )
    deadline = time.monotonic() + timeout
    try:
        with opener.open(request, timeout=timeout) as response:
            if response.status != 200:
                raise _FetchError(f"{url}: HTTP {response.status}")
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise _FetchError(f"{url}: response exceeds {limit} bytes")
            chunks: list[bytes] = []
            total = 0
            while chunk := response.read1(65536):
                total += len(chunk)
                if total > limit:
                    raise _FetchError(f"{url}: response exceeds {limit} bytes")
                if time.monotonic() > deadline:
                    raise _FetchError(f"{url}: timed out after {timeout:g}s")
                chunks.append(chunk)
    except _FetchError:
        raise
    except urllib.error.HTTPError as exc:
        raise _FetchError(f"{url}: HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise _FetchError(f"{url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:
        # socket.timeout, resets, http.client errors (which subclass neither): the class
        # name is enough for an operator and cannot carry a response body.
        raise _FetchError(f"{url}: {type(exc).__name__}: {exc}") from None
    try:
        document = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        raise _FetchError(f"{url}: response is not valid JSON") from None
    if not isinstance(document, dict):
        raise _FetchError(f"{url}: response is not a JSON object")
    return document


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class _Key:
    """One usable verification key from a JWKS."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own "alg", if it pins one
    key: AllowedPublicKeys

    def fits(self, alg: str) -> bool:
        family = _KEY_FAMILIES.get(alg)
        if family is None or family[0] != self.kty:
            return False
        curves = family[1]
        if curves is not None and self.crv not in curves:
            return False
        return self.alg is None or self.alg == alg


def _parse_jwks(document: Mapping[str, Any], issuer_name: str) -> list[_Key]:
    raw_keys = document.get("keys")
    if not isinstance(raw_keys, list):
        raise _FetchError("JWKS has no 'keys' array")
    keys: list[_Key] = []
    for raw in raw_keys:
        if not isinstance(raw, dict):
            continue
        kty, crv, kid = raw.get("kty"), raw.get("crv"), raw.get("kid")
        if raw.get("use", "sig") != "sig":
            continue
        ops = raw.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        if not isinstance(kty, str) or (crv is not None and not isinstance(crv, str)):
            continue
        if kid is not None and not isinstance(kid, str):
            continue
        parse_as = _PARSE_AS.get((kty, crv if kty != "RSA" else None))
        if parse_as is None:
            # "oct" lands here too: an HMAC secret never comes from a network document.
            log.debug("issuer %r: skipping JWKS key %r of type %s", issuer_name, kid, kty)
            continue
        if _PRIVATE_JWK_MEMBERS & raw.keys():
            log.warning(
                "issuer %r: JWKS key %r contains private key material; ignored",
                issuer_name,
                kid,
            )
            continue
        alg = raw.get("alg")
        try:
            parsed = jwt.PyJWK(raw, algorithm=parse_as)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            log.warning("issuer %r: JWKS key %r cannot be parsed; ignored", issuer_name, kid)
            continue
        keys.append(
            _Key(
                kid=kid,
                kty=kty,
                crv=crv if kty != "RSA" else None,
                alg=alg if isinstance(alg, str) else None,
                key=parsed.key,
            )
        )
    return keys


def _read_hmac_secret(cfg: IssuerConfig) -> tuple[bytes | None, str]:
    """The issuer's shared secret and, if it is configured but unusable, why (no value)."""
    if cfg.hmac_secret_env:
        value = os.environ.get(cfg.hmac_secret_env)
        if not value:
            return None, f"environment variable {cfg.hmac_secret_env} is unset or empty"
        secret = value.encode("utf-8")
    elif cfg.hmac_secret_file:
        try:
            with open(cfg.hmac_secret_file, "rb") as fh:
                secret = fh.read(_MAX_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            return None, f"cannot read {cfg.hmac_secret_file}: {exc.strerror}"
        if len(secret) > _MAX_SECRET_FILE_BYTES:
            return None, f"{cfg.hmac_secret_file} is larger than {_MAX_SECRET_FILE_BYTES} bytes"
        # An editor's trailing newline is not part of the secret.
        secret = secret.removesuffix(b"\n").removesuffix(b"\r")
    else:
        return None, ""
    if len(secret) < MIN_HMAC_SECRET_BYTES:
        return None, f"the shared secret is shorter than {MIN_HMAC_SECRET_BYTES} bytes"
    return secret, ""


def _is_loopback_url(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(eq=False)
class _Issuer:
    """One configured issuer and what is known of its keys."""

    cfg: IssuerConfig
    hmac_secret: bytes | None
    hmac_problem: str
    keys: list[_Key] = field(default_factory=list)
    loaded: bool = False  # at least one JWKS fetch succeeded
    jwks_uri: str | None = None  # None: run discovery first
    last_attempt: float | None = None  # clock() at the start of the last fetch
    last_error: str = ""
    inflight: asyncio.Task[None] | None = None

    @property
    def needs_jwks(self) -> bool:
        return any(alg not in _HMAC_ALGORITHMS for alg in self.cfg.algorithms)

    def find(self, kid: str | None, alg: str) -> tuple[_Key | None, bool]:
        """(the key that may verify ``alg`` under ``kid``, whether ``kid`` is known)."""
        if kid is None:
            fitting = [k for k in self.keys if k.fits(alg)]
            # Without a kid the choice must be unambiguous; trying every key in turn
            # would let one token probe several keys.
            return (fitting[0] if len(fitting) == 1 else None), bool(fitting)
        named = [k for k in self.keys if k.kid == kid]
        for k in named:
            if k.fits(alg):
                return k, True
        return None, bool(named)


# --------------------------------------------------------------------------- verifier


class OidcVerifier:
    """Verifies OIDC JWTs against the configured issuers.

    ``clock`` (Unix seconds) paces the on-demand JWKS refresh and backs up PyJWT's
    ``iat`` check; tests inject one to step past ``jwks_min_refresh_interval``.

    Lifecycle: ``await start()`` fetches every issuer's keys (an issuer that fails is
    logged and retried later, never fatal) and schedules refreshes; ``verify`` works even
    before or without ``start`` (keys are then fetched on demand); ``await close()`` stops
    the background refreshes. A closed verifier still verifies with the keys it holds
    (sessions mid-authentication during a reload), but fetches nothing new.
    """

    def __init__(
        self, issuers: Sequence[IssuerConfig], *, clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._issuers: dict[str, _Issuer] = {}
        for cfg in issuers:
            if cfg.issuer in self._issuers:
                log.warning(
                    "issuer %r has the same iss %r as issuer %r; only the first is used",
                    cfg.name,
                    cfg.issuer,
                    self._issuers[cfg.issuer].cfg.name,
                )
                continue
            secret, problem = _read_hmac_secret(cfg)
            if problem:
                log.error("issuer %r: HMAC tokens disabled: %s", cfg.name, problem)
            elif secret is not None and not _HMAC_ALGORITHMS & set(cfg.algorithms):
                log.warning(
                    "issuer %r has a shared secret but no HS256/384/512 in algorithms; "
                    "HMAC tokens will be refused",
                    cfg.name,
                )
            state = _Issuer(cfg=cfg, hmac_secret=secret, hmac_problem=problem)
            state.jwks_uri = cfg.jwks_uri or None
            if cfg.allow_insecure_http and not _is_loopback_url(
                cfg.jwks_uri or cfg.discovery_url or cfg.issuer
            ):
                log.warning(
                    "issuer %r: allow_insecure_http with a non-loopback URL; keys fetched "
                    "over plain http can be replaced by anyone on the network path",
                    cfg.name,
                )
            self._issuers[cfg.issuer] = state
        # Checked before anything is parsed; each issuer's own limit is applied once the
        # token names its issuer.
        self._max_token_bytes = max((c.max_token_bytes for c in issuers), default=16384)
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._closed = False

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Fetch discovery and JWKS for every issuer, then schedule periodic refreshes."""
        if self._started or self._closed:
            # A second caller (a reload spawning start() while the worker awaits it)
            # still returns only once the first fetches have finished.
            pending = [s.inflight for s in self._issuers.values() if s.inflight is not None]
            if pending:
                await asyncio.wait(pending)
            return
        self._started = True
        states = [s for s in self._issuers.values() if s.needs_jwks]
        loads = [s.inflight or self._begin_load(s) for s in states]
        if loads:
            await asyncio.wait(loads)
        for state in states:
            task = asyncio.get_running_loop().create_task(self._refresh_periodically(state))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop background refreshes and abandon fetches in progress."""
        self._closed = True
        tasks: list[asyncio.Task[None]] = list(self._tasks)
        tasks += [s.inflight for s in self._issuers.values() if s.inflight is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ----------------------------------------------------------------- verification

    async def verify(self, token: str) -> Principal:
        """The principal ``token`` proves, or :class:`TokenRejected` saying why not."""
        # Characters never outnumber UTF-8 bytes: a long string is refused unencoded.
        if len(token) > self._max_token_bytes or _token_size(token) > self._max_token_bytes:
            raise TokenRejected(f"token exceeds {self._max_token_bytes} bytes")
        header, unverified = _unverified_parts(token)

        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise TokenRejected("malformed token: no algorithm in header")
        if alg.lower() == "none":
            raise TokenRejected("token algorithm 'none' is never accepted")

        iss = unverified.get("iss")
        if iss is None:
            raise TokenRejected("token is missing required claim 'iss'")
        if not isinstance(iss, str):
            raise TokenRejected("malformed token: 'iss' is not a string")
        state = self._issuers.get(iss)
        if state is None:
            raise TokenRejected(f"unknown token issuer {_quote(iss)}")
        cfg = state.cfg
        if _token_size(token) > cfg.max_token_bytes:
            raise TokenRejected(f"token exceeds {cfg.max_token_bytes} bytes")
        if alg not in cfg.algorithms:
            raise TokenRejected(
                f"token algorithm {_quote(alg)} is not allowed for issuer {cfg.name!r}"
            )

        key: AllowedPublicKeys | bytes
        if alg in _HMAC_ALGORITHMS:
            if state.hmac_secret is None:
                why = "its shared secret is unavailable" if state.hmac_problem else (
                    "no shared secret is configured"
                )
                raise TokenRejected(
                    f"token algorithm {alg!r} is not allowed for issuer {cfg.name!r}: {why}"
                )
            key = state.hmac_secret
        else:
            if alg not in _KEY_FAMILIES:
                raise TokenRejected(f"token algorithm {_quote(alg)} is not supported")
            key = await self._public_key(state, header, alg)

        claims = self._decode(token, key, alg, cfg, unverified)
        return self._principal(cfg, claims)

    async def _public_key(
        self, state: _Issuer, header: Mapping[str, Any], alg: str
    ) -> AllowedPublicKeys:
        cfg = state.cfg
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("malformed token: 'kid' is not a string")
        key, kid_known = state.find(kid, alg)
        if key is None and not kid_known:
            # Unknown kid: the IdP may have rotated. One (rate-limited) refresh, then retry.
            await self._refresh_on_demand(state)
            key, kid_known = state.find(kid, alg)
        if key is not None:
            return key.key
        if not state.loaded:
            raise TokenRejected(
                f"issuer {cfg.name!r} is unavailable: its signing keys could not be fetched"
            )
        if kid is None:
            raise TokenRejected(
                f"token has no key id ('kid') and issuer {cfg.name!r} has no single "
                f"{alg} key"
            )
        if kid_known:
            raise TokenRejected(
                f"token signing key {_quote(kid)} of issuer {cfg.name!r} cannot be used "
                f"with algorithm {alg!r}"
            )
        raise TokenRejected(
            f"token signing key {_quote(kid)} is unknown to issuer {cfg.name!r}"
        )

    def _decode(
        self,
        token: str,
        key: AllowedPublicKeys | bytes,
        alg: str,
        cfg: IssuerConfig,
        unverified: Mapping[str, Any],
    ) -> dict[str, Any]:
        # PyJWT checks the signature before any claim, so when a claim check fails the
        # unverified payload is in fact verified and may be quoted (exp, nbf times).
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=cfg.audiences,
                issuer=cfg.issuer,
                leeway=cfg.leeway,
                options={
                    "require": list(cfg.required_claims),
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.InvalidSignatureError:
            raise TokenRejected("token signature is invalid", INVALID_PASSWORD) from None
        except jwt.ExpiredSignatureError:
            raise TokenRejected("token expired" + _when(unverified.get("exp"), "at")) from None
        except jwt.ImmatureSignatureError as exc:
            # PyJWT raises this for both nbf and iat; its message names which.
            if "iat" in str(exc):
                raise TokenRejected("token issued in the future (iat)") from None
            raise TokenRejected(
                "token not yet valid (nbf)" + _when(unverified.get("nbf"), "before")
            ) from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("token audience does not match") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("token issuer does not match") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"token is missing required claim {exc.claim!r}") from None
        except jwt.InvalidIssuedAtError:
            raise TokenRejected("malformed token: 'iat' is not a number") from None
        except jwt.InvalidKeyError:
            raise TokenRejected(
                f"token signing key of issuer {cfg.name!r} is not usable with {alg!r}"
            ) from None
        except jwt.InvalidAlgorithmError:
            raise TokenRejected(
                f"token algorithm {alg!r} is not allowed for issuer {cfg.name!r}"
            ) from None
        except jwt.DecodeError:
            raise TokenRejected("malformed token") from None
        except jwt.PyJWTError:
            # Remaining PyJWT checks (sub/jti types, crit headers): nothing more specific
            # to say, and the exception text may quote token content.
            raise TokenRejected("token is invalid") from None
        except (ValueError, TypeError, RecursionError):
            raise TokenRejected("malformed token") from None
        # Independent of the PyJWT version: older releases only type-check iat.
        iat = claims.get("iat")
        if iat is not None:
            try:
                issued = float(iat)
            except (TypeError, ValueError, OverflowError):
                raise TokenRejected("malformed token: 'iat' is not a number") from None
            if issued > self._clock() + cfg.leeway:
                raise TokenRejected("token issued in the future (iat)")
        return claims

    @staticmethod
    def _principal(cfg: IssuerConfig, claims: dict[str, Any]) -> Principal:
        subject = claims.get(cfg.subject_claim)
        if subject is None or subject == "":
            raise TokenRejected(f"token is missing required claim {cfg.subject_claim!r}")
        if not isinstance(subject, str):
            raise TokenRejected(f"token claim {cfg.subject_claim!r} is not a string")
        client_id = ""
        for name in cfg.client_id_claims:
            value = claims.get(name)
            if isinstance(value, str) and value:
                client_id = value
                break
        raw_groups = claims.get(cfg.group_claim)
        if raw_groups is None:
            groups: frozenset[str] = frozenset()
        elif isinstance(raw_groups, str):
            groups = frozenset({raw_groups})
        elif isinstance(raw_groups, list) and all(isinstance(g, str) for g in raw_groups):
            groups = frozenset(raw_groups)
        else:
            # Bindings grant roles by group; a claim we cannot read must not be guessed at.
            raise TokenRejected(
                f"token claim {cfg.group_claim!r} must be a string or a list of strings"
            )
        expires_at: float | None = None
        exp = claims.get("exp")
        if exp is not None:
            try:
                expires_at = float(exp)
            except (TypeError, ValueError, OverflowError):
                raise TokenRejected("malformed token: 'exp' is not a number") from None
        return Principal(
            method="oidc",
            issuer=cfg.name,
            subject=subject,
            client_id=client_id,
            groups=groups,
            claims=claims,
            expires_at=expires_at,
        )

    # ----------------------------------------------------------------- key refresh

    def _begin_load(self, state: _Issuer) -> asyncio.Task[None]:
        state.last_attempt = self._clock()
        task = asyncio.get_running_loop().create_task(self._load(state))
        state.inflight = task

        def _done(t: asyncio.Task[None]) -> None:
            if state.inflight is t:
                state.inflight = None

        task.add_done_callback(_done)
        return task

    async def _refresh_on_demand(self, state: _Issuer) -> None:
        """Refresh unless one ran within ``jwks_min_refresh_interval``; join one in flight.

        Concurrent callers share one fetch, so a burst of tokens with a new kid (or an
        attacker's random kids) costs the IdP at most one request per interval.
        """
        task = state.inflight
        if task is None:
            if self._closed:
                return
            last = state.last_attempt
            if last is not None and self._clock() - last < state.cfg.jwks_min_refresh_interval:
                return
            task = self._begin_load(state)
        # asyncio.wait, not shield: it neither cancels the shared fetch when this caller is
        # cancelled nor raises if close() cancelled the fetch.
        await asyncio.wait([task])

    async def _refresh_periodically(self, state: _Issuer) -> None:
        cfg = state.cfg
        while True:
            interval = cfg.jwks_refresh_interval
            if not state.loaded:
                # An issuer that was down at startup is retried sooner than the schedule.
                interval = min(interval, max(cfg.jwks_min_refresh_interval, 1.0))
            # Jitter, so that the workers of a gateway do not all hit the IdP at once.
            await asyncio.sleep(max(interval * random.uniform(0.9, 1.0), _MIN_SCHEDULE_SECONDS))
            await asyncio.wait([state.inflight or self._begin_load(state)])

    async def _load(self, state: _Issuer) -> None:
        """Discovery (if needed) and JWKS; on failure keep the last good keys and log."""
        cfg = state.cfg
        try:
            if state.jwks_uri is None:
                state.jwks_uri = await self._discover(cfg)
            document = await self._fetch(state.jwks_uri, cfg)
            keys = _parse_jwks(document, cfg.name)
        except _FetchError as exc:
            state.last_error = str(exc)
            # The JWKS URL may have moved: rediscover next time unless it is configured.
            state.jwks_uri = cfg.jwks_uri or None
            log.warning(
                "issuer %r: cannot load signing keys (%s); %s",
                cfg.name,
                exc,
                "keeping the previous keys" if state.loaded else "will retry",
            )
            return
        except Exception:
            state.last_error = "internal error"
            log.exception("issuer %r: unexpected error while loading signing keys", cfg.name)
            return
        before = {k.kid for k in state.keys}
        after = {k.kid for k in keys}
        if not state.loaded or before != after:
            log.info(
                "issuer %r: %d signing keys loaded (kids: %s)",
                cfg.name,
                len(keys),
                ", ".join(sorted(str(k) for k in after)) or "none",
            )
        state.keys = keys
        state.loaded = True
        state.last_error = ""

    async def _discover(self, cfg: IssuerConfig) -> str:
        url = cfg.discovery_url or cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._fetch(url, cfg)
        # OpenID Connect Discovery 1.0 section 4.3: the document must name this issuer.
        if document.get("issuer") != cfg.issuer:
            raise _FetchError(f"{url}: discovery document is for a different issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise _FetchError(f"{url}: discovery document has no jwks_uri")
        return jwks_uri

    @staticmethod
    async def _fetch(url: str, cfg: IssuerConfig) -> dict[str, Any]:
        return await asyncio.to_thread(
            _fetch_json,
            url,
            timeout=cfg.http_timeout,
            allow_http=cfg.allow_insecure_http,
            limit=MAX_DOCUMENT_BYTES,
        )

    # ----------------------------------------------------------------- introspection

    def issuer_status(self) -> dict[str, dict[str, object]]:
        """Per issuer name: whether keys are loaded, their kids, and the last error."""
        return {
            s.cfg.name: {
                "loaded": s.loaded,
                "kids": sorted(str(k.kid) for k in s.keys),
                "last_error": s.last_error,
                "hmac": s.hmac_secret is not None,
            }
            for s in self._issuers.values()
        }
