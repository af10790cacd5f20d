"""Signing key files: permissions, no overwrite, PEM interop, key ids, rotation."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from gateway.audit import (
    AuditKeyError,
    generate_key,
    key_id,
    load_public_keys,
    load_signing_key,
    verify_records,
)
from gateway.audit.batch import link_to
from gateway.audit.keys import load_public_key
from tests.audit.helpers import epoch_records, items


def test_generate_writes_a_private_key_0600_and_a_public_key(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # a careless umask must not widen the private key's mode
    try:
        key, kid = generate_key(tmp_path / "audit.key")
    finally:
        os.umask(old_umask)
    private, public = tmp_path / "audit.key", tmp_path / "audit.key.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----\n")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----\n")
    assert load_signing_key(private).encode() == key.encode()
    assert kid == key_id(key.verify_key) == load_public_keys(public).popitem()[0]


def test_key_id_is_128_bits_of_sha256_of_the_raw_public_key(tmp_path: Path) -> None:
    key, kid = generate_key(tmp_path / "k")
    assert kid == hashlib.sha256(bytes(key.verify_key)).hexdigest()[:32]


@pytest.mark.parametrize("existing", ["k", "k.pub"])
def test_generate_never_overwrites(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious")
    with pytest.raises(AuditKeyError, match="already exists; refusing to overwrite"):
        generate_key(tmp_path / "k")
    assert (tmp_path / existing).read_text() == "precious"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_a_group_or_world_accessible_private_key_is_refused(tmp_path: Path, mode: int) -> None:
    generate_key(tmp_path / "k")
    os.chmod(tmp_path / "k", mode)
    with pytest.raises(AuditKeyError) as info:
        load_signing_key(tmp_path / "k")
    assert f"mode {mode:04o}" in str(info.value)
    assert f"chmod 600 {tmp_path / 'k'}" in str(info.value)


def test_malformed_key_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("hello\n")
    bad.chmod(0o600)
    with pytest.raises(AuditKeyError, match="expected a PEM PRIVATE KEY"):
        load_signing_key(bad)
    with pytest.raises(AuditKeyError, match="expected a PEM PUBLIC KEY"):
        load_public_key(bad)
    with pytest.raises(AuditKeyError, match="cannot read"):
        load_signing_key(tmp_path / "missing")
    generate_key(tmp_path / "k")
    with pytest.raises(AuditKeyError, match="is a private key; verification needs only"):
        load_public_keys([tmp_path / "k"])
    with pytest.raises(AuditKeyError, match=r"no \*\.pub public key files"):
        load_public_keys(_empty_dir(tmp_path))


def _empty_dir(tmp_path: Path) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_key_files_are_standard_pem_that_openssl_reads(tmp_path: Path) -> None:
    generate_key(tmp_path / "k")
    derived = subprocess.run(
        ["openssl", "pkey", "-in", str(tmp_path / "k"), "-pubout"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert derived == (tmp_path / "k.pub").read_text()


def test_rotation_a_directory_of_public_keys_verifies_both_generations(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    old, _ = generate_key(keys_dir / "2024.key")
    new, _ = generate_key(keys_dir / "2025.key")
    first = epoch_records(old, 2)
    second = epoch_records(new, 2, link=link_to(first[-1]))  # restarted with the new key
    keys = load_public_keys(keys_dir)
    assert set(keys) == {key_id(old.verify_key), key_id(new.verify_key)}
    report = verify_records(items(first + second), keys)
    assert report.ok, report.problems
    assert report.batches == len(first) + len(second)
    # Without the old key the first generation cannot be authenticated.
    only_new = load_public_keys([keys_dir / "2025.key.pub"])
    report = verify_records(items(first + second), only_new)
    assert not report.ok
    assert any("signed with unknown key" in p.message for p in report.problems)
