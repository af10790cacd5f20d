"""Ed25519 audit signing keys: generating, loading, and naming them by key id.

This module owns the key files and the key id. Signing and verifying records is
:mod:`gateway.audit.batch` and :mod:`gateway.audit.verify`.

Files are PEM, readable by any crypto library (``openssl pkey -in key.pem -text``):

- the private key is PKCS#8 ``-----BEGIN PRIVATE KEY-----`` wrapping the 32-byte Ed25519
  seed (RFC 8410), created with mode 0600 and never overwritten;
- the public key (``<private>.pub``) is SubjectPublicKeyInfo ``-----BEGIN PUBLIC KEY-----``
  wrapping the 32-byte public key.

Both DER encodings are a fixed prefix plus the 32 key bytes, so they are written and read
here without an ASN.1 library.

**Key id**: the first 16 bytes (32 hex digits) of SHA-256 of the raw 32-byte public key.
128 bits make an accidental collision between two keys of one deployment impossible in
practice (birthday bound 2^64), and an attacker gains nothing by a collision: a verifier
only holds keys it trusts and checks the signature with them. The id is in every record
so a verifier with several keys (rotation) knows which one to use without trying all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

__all__ = [
    "KEY_ID_BYTES",
    "AuditKeyError",
    "generate_key",
    "key_id",
    "load_public_key",
    "load_public_keys",
    "load_signing_key",
    "public_key_pem",
]

KEY_ID_BYTES = 16

# RFC 8410: PrivateKeyInfo { version 0, AlgorithmIdentifier { id-Ed25519 }, OCTET STRING
# { OCTET STRING seed } } and SubjectPublicKeyInfo { AlgorithmIdentifier, BIT STRING key }.
_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


class AuditKeyError(Exception):
    """A key file is missing, malformed, or unsafe to use; the message says which."""


def key_id(public_key: VerifyKey | bytes) -> str:
    """The key id of a public key: hex of the first 16 bytes of SHA-256(raw key)."""
    raw = bytes(public_key)
    return hashlib.sha256(raw).digest()[:KEY_ID_BYTES].hex()


def _pem(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"".join(
        [f"-----BEGIN {label}-----\n".encode(), *(line + b"\n" for line in lines),
         f"-----END {label}-----\n".encode()]
    )


def _unpem(data: bytes, label: str, path: str) -> bytes:
    text = data.decode("ascii", errors="replace").strip()
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    if not (text.startswith(begin) and text.endswith(end)):
        found = text.splitlines()[0] if text else "an empty file"
        raise AuditKeyError(f"{path}: expected a PEM {label}, found {found!r}")
    try:
        return base64.b64decode("".join(text[len(begin) : -len(end)].split()), validate=True)
    except binascii.Error:
        raise AuditKeyError(f"{path}: the PEM {label} is not valid base64") from None


def public_key_pem(public_key: VerifyKey) -> bytes:
    """The SubjectPublicKeyInfo PEM of ``public_key``."""
    return _pem("PUBLIC KEY", _SPKI_PREFIX + bytes(public_key))


def generate_key(path: str | os.PathLike[str]) -> tuple[SigningKey, str]:
    """Create a new signing key at ``path`` (mode 0600) and its public key at
    ``path + ".pub"`` (mode 0644). Returns the key and its key id.

    Refuses to overwrite either file (``O_EXCL``): replacing a signing key by accident
    would make the old public key, needed to verify everything signed so far, easy to lose.
    """
    private_path = os.fspath(path)
    public_path = private_path + ".pub"
    if os.path.lexists(public_path):
        raise AuditKeyError(f"{public_path} already exists; refusing to overwrite it")
    key = SigningKey.generate()
    private_pem = _pem("PRIVATE KEY", _PKCS8_PREFIX + bytes(key))
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise AuditKeyError(f"{private_path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise AuditKeyError(f"cannot create {private_path}: {exc.strerror or exc}") from None
    try:
        # The umask may have cleared bits of 0600 but cannot have added any; fchmod makes
        # the mode exact whatever the umask.
        os.fchmod(fd, 0o600)
        _write_all(fd, private_pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        os.unlink(private_path)  # a private key without its public half is a trap
        raise AuditKeyError(f"cannot create {public_path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o644)
        _write_all(fd, public_key_pem(key.verify_key))
        os.fsync(fd)
    finally:
        os.close(fd)
    return key, key_id(key.verify_key)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    """Load a private key written by :func:`generate_key`.

    Refuses a file that group or others may read or write: whoever can read it can forge
    audit records, and whoever can write it can swap in their own key.
    """
    file = os.fspath(path)
    try:
        with open(file, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            data = fh.read()
    except OSError as exc:
        raise AuditKeyError(f"cannot read signing key {file}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise AuditKeyError(
            f"signing key {file} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {file}"
        )
    der = _unpem(data, "PRIVATE KEY", file)
    if len(der) != len(_PKCS8_PREFIX) + 32 or not der.startswith(_PKCS8_PREFIX):
        raise AuditKeyError(f"{file}: not an Ed25519 private key (PKCS#8, RFC 8410)")
    return SigningKey(der[len(_PKCS8_PREFIX) :])


def load_public_key(path: str | os.PathLike[str]) -> VerifyKey:
    """Load one public key file (``-----BEGIN PUBLIC KEY-----``, Ed25519)."""
    file = os.fspath(path)
    try:
        data = Path(file).read_bytes()
    except OSError as exc:
        raise AuditKeyError(f"cannot read public key {file}: {exc.strerror or exc}") from None
    if b"PRIVATE KEY" in data:
        raise AuditKeyError(
            f"{file} is a private key; verification needs only the public key "
            f"({file}.pub), and the private key should not leave the gateway"
        )
    der = _unpem(data, "PUBLIC KEY", file)
    if len(der) != len(_SPKI_PREFIX) + 32 or not der.startswith(_SPKI_PREFIX):
        raise AuditKeyError(f"{file}: not an Ed25519 public key (SubjectPublicKeyInfo, RFC 8410)")
    return VerifyKey(der[len(_SPKI_PREFIX) :])


def load_public_keys(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> dict[str, VerifyKey]:
    """Key id -> public key for every file given; a directory contributes every ``*.pub``
    in it. Several keys are normal: a verifier keeps the keys of rotated-out signers to
    check what they signed."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    keys: dict[str, VerifyKey] = {}
    for entry in paths:
        entry_path = Path(entry)
        if entry_path.is_dir():
            files = sorted(entry_path.glob("*.pub"))
            if not files:
                raise AuditKeyError(f"{entry_path}: no *.pub public key files in this directory")
        else:
            files = [entry_path]
        for file in files:
            key = load_public_key(file)
            keys[key_id(key)] = key
    return keys
