"""A development OIDC issuer on loopback. NOT FOR PRODUCTION.

Serves ``/.well-known/openid-configuration`` and a JWKS over plain HTTP on 127.0.0.1 and
mints tokens with keys it generates in memory at start-up, so the test suite, the README
demo and a developer's laptop can exercise pgwarden's token authentication without a
real identity provider (``pgwarden dev issuer``).

Everything that makes it convenient makes it unfit for production: it signs whatever it
is asked to sign for whoever asks, its keys live only in process memory and change on
every start, it speaks HTTP rather than HTTPS (so a gateway must set
``allow_insecure_http = true`` for it, which is acceptable only on loopback), and it
refuses to listen anywhere but a loopback address.

Owns key generation (RSA 2048 for RS256, P-256 for ES256, Ed25519 for EdDSA), the JWKS
and discovery documents, key rotation, token minting, and the ``pgwarden dev issuer``
command. It knows nothing about how tokens are verified (``gateway.identity.oidc``) and
must not import ``gateway.server`` or ``gateway.policy``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, TextIO

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = [
    "DISCOVERY_PATH",
    "JWKS_PATH",
    "SUPPORTED_ALGORITHMS",
    "DevIssuer",
    "issuer_snippet",
    "main",
]

DISCOVERY_PATH: Final = "/.well-known/openid-configuration"
JWKS_PATH: Final = "/jwks.json"
SUPPORTED_ALGORITHMS: Final = ("RS256", "ES256", "EdDSA")

_PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _generate(alg: str) -> _PrivateKey:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported algorithm {alg!r}; choose one of {SUPPORTED_ALGORITHMS}")


@dataclass(frozen=True, slots=True)
class _DevKey:
    kid: str
    alg: str
    private: _PrivateKey
    published: bool

    def jwk(self) -> dict[str, Any]:
        public = jwt.get_algorithm_by_name(self.alg).to_jwk(
            self.private.public_key(), as_dict=True
        )
        assert isinstance(public, dict)
        return {**public, "kid": self.kid, "alg": self.alg, "use": "sig"}


class DevIssuer:
    """An OIDC issuer on ``http://127.0.0.1:<port>`` (NOT FOR PRODUCTION).

    Serving starts in the constructor (``port=0`` picks a free port) and stops with
    :meth:`stop` or at the end of a ``with`` block. One signing key per algorithm in
    ``algorithms`` is generated up front. Safe to use from several threads.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        algorithms: Sequence[str] = SUPPORTED_ALGORITHMS,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError("the development issuer only listens on a loopback address")
        self._lock = threading.Lock()
        self._keys: dict[str, _DevKey] = {}
        self._signing: dict[str, str] = {}  # alg -> kid of the current signing key
        self._requests: Counter[str] = Counter()
        #: When True every request is answered 503, as an IdP outage would be.
        self.failing = False
        for alg in algorithms:
            self.rotate(alg)
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        bound_host, bound_port = self._server.server_address[:2]
        host_text = bound_host.decode() if isinstance(bound_host, bytes) else bound_host
        if ":" in host_text:
            host_text = f"[{host_text}]"
        self._url = f"http://{host_text}:{bound_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="pgwarden-dev-issuer", daemon=True
        )
        self._stopped = False
        self._thread.start()

    # ----------------------------------------------------------------- serving

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with issuer._lock:
                    issuer._requests[path] += 1
                if issuer.failing:
                    self._send(503, {"error": "temporarily_unavailable"})
                elif path == DISCOVERY_PATH:
                    self._send(200, issuer.discovery_document())
                elif path == JWKS_PATH:
                    self._send(200, issuer.jwks())
                else:
                    self._send(404, {"error": "not_found"})

            def _send(self, status: int, body: Mapping[str, Any]) -> None:
                data = json.dumps(body).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                # Request lines would clutter test output and the demo's terminal.
                return

        return Handler

    @property
    def url(self) -> str:
        """The issuer URL: the exact ``iss`` of minted tokens, without a trailing slash."""
        return self._url

    @property
    def jwks_uri(self) -> str:
        return self._url + JWKS_PATH

    def discovery_document(self) -> dict[str, Any]:
        with self._lock:
            algs = sorted({k.alg for k in self._keys.values() if k.published})
        return {
            "issuer": self._url,
            "jwks_uri": self.jwks_uri,
            "id_token_signing_alg_values_supported": algs,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        }

    def jwks(self) -> dict[str, Any]:
        """The published public keys, as served at :data:`JWKS_PATH`."""
        with self._lock:
            keys = [k for k in self._keys.values() if k.published]
        return {"keys": [k.jwk() for k in keys]}

    def requests(self, path: str = JWKS_PATH) -> int:
        """How many GET requests for ``path`` were served (JWKS fetches by default)."""
        with self._lock:
            return self._requests[path]

    # ----------------------------------------------------------------- keys

    def add_key(self, alg: str = "RS256", *, publish: bool = True) -> str:
        """Generate a key for ``alg`` without making it the signing key; return its kid.

        ``publish=False`` keeps it out of the JWKS: tokens signed with it carry a kid the
        issuer never published (an "unknown kid" for a verifier).
        """
        key = _DevKey(
            kid=f"{alg.lower()}-{secrets.token_hex(4)}",
            alg=alg,
            private=_generate(alg),
            published=publish,
        )
        with self._lock:
            self._keys[key.kid] = key
        return key.kid

    def rotate(self, alg: str = "RS256", *, drop_old: bool = False) -> str:
        """Add and publish a new ``alg`` key and sign with it from now on; return its kid.

        Old keys stay published (as IdPs do during a rotation, so tokens already issued
        still verify) unless ``drop_old`` removes every other key of this algorithm.
        """
        kid = self.add_key(alg)
        with self._lock:
            self._signing[alg] = kid
            if drop_old:
                for other in [k for k in self._keys.values() if k.alg == alg and k.kid != kid]:
                    del self._keys[other.kid]
        return kid

    def remove_key(self, kid: str) -> None:
        """Stop publishing (and signing with) ``kid``."""
        with self._lock:
            key = self._keys.pop(kid)
            if self._signing.get(key.alg) == kid:
                del self._signing[key.alg]

    def signing_kid(self, alg: str = "RS256") -> str:
        with self._lock:
            return self._signing[alg]

    def public_key_pem(self, kid: str | None = None, alg: str = "RS256") -> bytes:
        """PEM of a public key (the signing key for ``alg`` by default)."""
        key = self._key(alg, kid)
        return key.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def _key(self, alg: str, kid: str | None) -> _DevKey:
        with self._lock:
            if kid is None:
                if alg not in self._signing:
                    raise ValueError(f"no signing key for {alg!r}; call rotate({alg!r})")
                kid = self._signing[alg]
            key = self._keys.get(kid)
        if key is None:
            raise KeyError(f"no key with kid {kid!r}")
        if key.alg != alg:
            raise ValueError(f"key {kid!r} is a {key.alg} key, not {alg}")
        return key

    # ----------------------------------------------------------------- tokens

    def claims(
        self,
        subject: str,
        *,
        audience: str | Sequence[str],
        ttl: float = 300,
        extra_claims: Mapping[str, Any] | None = None,
        issuer: str | None = None,
        not_before: float | None = None,
        issued_at: float | None = None,
    ) -> dict[str, Any]:
        """The claims :meth:`mint` signs. ``exp`` is now + ``ttl`` (negative: expired).

        ``not_before`` and ``issued_at`` are Unix times (``nbf`` is omitted unless
        given; ``iat`` defaults to now). In ``extra_claims`` a value of None removes the
        claim, e.g. ``{"sub": None}``.
        """
        now = time.time()
        out: dict[str, Any] = {
            "iss": self._url if issuer is None else issuer,
            "sub": subject,
            "aud": audience if isinstance(audience, str) else list(audience),
            "iat": int(now if issued_at is None else issued_at),
            "exp": int(now + ttl),
            "jti": secrets.token_hex(8),
        }
        if not_before is not None:
            out["nbf"] = int(not_before)
        for name, value in (extra_claims or {}).items():
            if value is None:
                out.pop(name, None)
            else:
                out[name] = value
        return out

    def mint(
        self,
        subject: str,
        *,
        audience: str | Sequence[str],
        ttl: float = 300,
        alg: str = "RS256",
        kid: str | None = None,
        extra_claims: Mapping[str, Any] | None = None,
        issuer: str | None = None,
        not_before: float | None = None,
        issued_at: float | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """A signed JWT for ``subject``, signed with key ``kid`` or the current ``alg`` key.

        A ``kid`` this issuer never generated is not an error: the token is signed with
        the current ``alg`` key and carries that unknown kid in its header, which is how
        tests present an "unknown kid". ``headers`` adds or overrides JOSE header fields
        after key selection (a value of None removes one).
        """
        with self._lock:
            known = kid is None or kid in self._keys
        key = self._key(alg, kid if known else None)
        header: dict[str, Any] = {"kid": key.kid if known else kid}
        for name, value in (headers or {}).items():
            if value is None:
                header.pop(name, None)
            else:
                header[name] = value
        payload = self.claims(
            subject,
            audience=audience,
            ttl=ttl,
            extra_claims=extra_claims,
            issuer=issuer,
            not_before=not_before,
            issued_at=issued_at,
        )
        return jwt.encode(payload, key.private, algorithm=alg, headers=header)

    # ----------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Stop serving and release the port. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> DevIssuer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- CLI


def _toml_string(value: str) -> str:
    # json.dumps yields a valid TOML basic string for any text.
    return json.dumps(value)


def issuer_snippet(issuer: DevIssuer, *, name: str, audience: str) -> str:
    """An ``[[issuers]]`` table that makes a gateway accept this issuer's tokens."""
    return (
        "[[issuers]]\n"
        f"name = {_toml_string(name)}\n"
        f"issuer = {_toml_string(issuer.url)}\n"
        f"audiences = [{_toml_string(audience)}]\n"
        "# The development issuer speaks plain HTTP on loopback. Never set this for a\n"
        "# real identity provider.\n"
        "allow_insecure_http = true\n"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgwarden dev issuer",
        description="Run a development OIDC issuer on 127.0.0.1 and mint a token. "
        "NOT FOR PRODUCTION: it signs anything for anyone, over plain HTTP, with keys "
        "that change on every start.",
    )
    parser.add_argument("--port", type=int, default=0, help="listen port (default: free)")
    parser.add_argument("--name", default="dev", help="issuer name in the snippet")
    parser.add_argument("--subject", default="dev-job", help="token subject (sub)")
    parser.add_argument("--audience", default="pgwarden", help="token audience (aud)")
    parser.add_argument("--alg", choices=SUPPORTED_ALGORITHMS, default="RS256")
    parser.add_argument("--ttl", type=float, default=3600.0, help="token lifetime, seconds")
    parser.add_argument(
        "--group", action="append", default=[], metavar="GROUP", help="add to 'groups'"
    )
    parser.add_argument(
        "--client-id", default="", metavar="ID", help="azp claim (default: none)"
    )
    return parser


def main(
    argv: list[str] | None = None,
    *,
    stop: threading.Event | None = None,
    out: TextIO | None = None,
) -> int:
    """``pgwarden dev issuer``: serve until Ctrl-C (or until ``stop`` is set).

    Prints the issuer URL, an ``[[issuers]]`` snippet and a token to ``out`` (stdout);
    the production warning goes to stderr. Returns the process exit code.
    """
    args = _parser().parse_args(argv)
    out = sys.stdout if out is None else out
    stop = threading.Event() if stop is None else stop
    try:
        issuer = DevIssuer(port=args.port, algorithms=(args.alg,))
    except OSError as exc:
        print(f"pgwarden dev issuer: cannot listen on port {args.port}: {exc}", file=sys.stderr)
        return 1
    extra: dict[str, Any] = {}
    if args.group:
        extra["groups"] = list(args.group)
    if args.client_id:
        extra["azp"] = args.client_id
    with issuer:
        token = issuer.mint(
            args.subject, audience=args.audience, ttl=args.ttl, alg=args.alg, extra_claims=extra
        )
        print(
            "pgwarden dev issuer: NOT FOR PRODUCTION (signs anything, plain HTTP, "
            "throwaway keys)",
            file=sys.stderr,
        )
        print(f"issuer: {issuer.url}", file=out)
        print("", file=out)
        print(issuer_snippet(issuer, name=args.name, audience=args.audience), file=out)
        print(f"# token for sub={args.subject!r}, valid {args.ttl:g}s:", file=out)
        print(token, file=out)
        out.flush()
        try:
            # A timed wait, so Ctrl-C is noticed promptly on every platform.
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
