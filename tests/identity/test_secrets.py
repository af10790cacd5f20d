"""gateway.identity.secrets: upstream passwords from env var or file, never leaked."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from gateway.config import RoleConfig, UpstreamConfig
from gateway.identity.secrets import (
    MAX_SECRET_FILE_BYTES,
    SecretSourceError,
    read_role_password,
    read_upstream_password,
)

SECRET = "s3cr3t-Ünïcode"


def upstream(password_env: str = "", password_file: str = "") -> UpstreamConfig:
    return UpstreamConfig(user="pgwarden", password_env=password_env, password_file=password_file)


def test_no_source_means_no_password() -> None:
    assert read_upstream_password(upstream()) is None


def test_from_env_mapping() -> None:
    cfg = upstream(password_env="PGW_PASS")
    assert read_upstream_password(cfg, {"PGW_PASS": SECRET}) == SECRET


def test_from_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGW_TEST_PASS", SECRET)
    assert read_upstream_password(upstream(password_env="PGW_TEST_PASS")) == SECRET


def test_env_value_is_not_stripped() -> None:
    # Only files get the trailing-newline courtesy; an env var is taken as is.
    cfg = upstream(password_env="P")
    assert read_upstream_password(cfg, {"P": " x\n"}) == " x\n"


@pytest.mark.parametrize(
    ("environ", "fragment"), [({}, "is not set"), ({"PGW_PASS": ""}, "is empty")]
)
def test_env_errors_name_the_variable(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(SecretSourceError) as info:
        read_upstream_password(upstream(password_env="PGW_PASS"), environ)
    assert "PGW_PASS" in str(info.value)
    assert fragment in str(info.value)
    assert info.value.source == "env:PGW_PASS"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (SECRET, SECRET),
        (SECRET + "\n", SECRET),
        (SECRET + "\r\n", SECRET),
        (SECRET + "\n\n", SECRET + "\n"),  # only one newline is stripped
        (" " + SECRET + " \n", " " + SECRET + " "),  # spaces may be part of a secret
    ],
)
def test_from_file(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "pw"
    path.write_bytes(content.encode())
    assert read_upstream_password(upstream(password_file=str(path))) == expected


def test_file_is_reread_each_time(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    cfg = upstream(password_file=str(path))
    path.write_text("old\n")
    assert read_upstream_password(cfg) == "old"
    path.write_text("rotated\n")
    assert read_upstream_password(cfg) == "rotated"


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(SecretSourceError) as info:
        read_upstream_password(upstream(password_file=str(path)))
    assert str(path) in str(info.value)
    assert "No such file" in str(info.value)
    assert info.value.source == f"file:{path}"


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(SECRET)
    path.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(SecretSourceError, match="Permission denied"):
            read_upstream_password(upstream(password_file=str(path)))
        return
    # Root reads any file: check with the effective uid of "nobody", then restore it.
    os.seteuid(pwd.getpwnam("nobody").pw_uid)
    try:
        with pytest.raises(SecretSourceError, match="Permission denied") as info:
            read_upstream_password(upstream(password_file=str(path)))
    finally:
        os.seteuid(0)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("content", [b"", b"\n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "pw"
    path.write_bytes(content)
    with pytest.raises(SecretSourceError, match="is empty"):
        read_upstream_password(upstream(password_file=str(path)))


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(SecretSourceError, match=str(tmp_path)):
        read_upstream_password(upstream(password_file=str(tmp_path)))


def test_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"x" * (MAX_SECRET_FILE_BYTES + 1))
    with pytest.raises(SecretSourceError, match="larger than"):
        read_upstream_password(upstream(password_file=str(path)))


def test_invalid_utf8_does_not_leak_any_byte(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"abc\xfedef")
    with pytest.raises(SecretSourceError) as info:
        read_upstream_password(upstream(password_file=str(path)))
    message = str(info.value)
    assert "not valid UTF-8" in message
    # UnicodeDecodeError's own text would quote 0xfe and the position: neither may appear.
    assert "0xfe" not in message and "abc" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_both_sources_refused() -> None:
    cfg = upstream(password_env="P", password_file="/f")
    with pytest.raises(SecretSourceError, match="both"):
        read_upstream_password(cfg, {"P": SECRET})


def test_errors_never_contain_the_secret(tmp_path: Path) -> None:
    # A file full of the secret but too large, an env var present but the wrong one:
    # whatever the failure, the value must not appear in the message.
    path = tmp_path / "pw"
    path.write_text(SECRET * (MAX_SECRET_FILE_BYTES // len(SECRET) + 1))
    failures: list[SecretSourceError] = []
    for cfg, environ in (
        (upstream(password_file=str(path)), {}),
        (upstream(password_env="MISSING"), {"OTHER": SECRET}),
        (upstream(password_env="P", password_file=str(path)), {"P": SECRET}),
    ):
        with pytest.raises(SecretSourceError) as info:
            read_upstream_password(cfg, environ)
        failures.append(info.value)
    for exc in failures:
        assert SECRET not in str(exc) and SECRET not in repr(exc)


# --------------------------------------------------------------------------- role secrets


def role(password_env: str = "", password_file: str = "") -> RoleConfig:
    return RoleConfig(
        name="etl_loader", upstream_user="etl", password_env=password_env,
        password_file=password_file,
    )


def test_role_without_source_has_no_password() -> None:
    assert read_role_password(role()) is None


def test_role_password_from_env_mapping_and_process(monkeypatch: pytest.MonkeyPatch) -> None:
    assert read_role_password(role(password_env="ETL_PW"), {"ETL_PW": SECRET}) == SECRET
    monkeypatch.setenv("PGW_TEST_ROLE_PW", SECRET)
    assert read_role_password(role(password_env="PGW_TEST_ROLE_PW")) == SECRET


def test_role_password_from_file_is_reread(tmp_path: Path) -> None:
    path = tmp_path / "etl.pw"
    cfg = role(password_file=str(path))
    path.write_text(SECRET + "\n")
    assert read_role_password(cfg) == SECRET
    path.write_text("rotated\n")  # what a SIGHUP after a secret rotation picks up
    assert read_role_password(cfg) == "rotated"


@pytest.mark.parametrize(
    ("environ", "fragment"), [({}, "is not set"), ({"ETL_PW": ""}, "is empty")]
)
def test_role_env_errors_name_role_and_variable(
    environ: dict[str, str], fragment: str
) -> None:
    with pytest.raises(SecretSourceError) as info:
        read_role_password(role(password_env="ETL_PW"), environ)
    message = str(info.value)
    assert message.startswith('role "etl_loader": ')
    assert "ETL_PW" in message and fragment in message
    assert info.value.source == "env:ETL_PW"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "No such file"),
        (b"", "is empty"),
        (b"x" * (MAX_SECRET_FILE_BYTES + 1), "larger than"),
        (b"abc\xfedef", "not valid UTF-8"),
    ],
)
def test_role_file_errors_name_role_and_path(
    tmp_path: Path, content: bytes | None, fragment: str
) -> None:
    path = tmp_path / "etl.pw"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SecretSourceError) as info:
        read_role_password(role(password_file=str(path)))
    message = str(info.value)
    assert message.startswith('role "etl_loader": ')
    assert str(path) in message and fragment in message
    assert info.value.source == f"file:{path}"
    assert "abc" not in message and "0xfe" not in message


def test_role_with_both_sources_refused() -> None:
    with pytest.raises(SecretSourceError, match="both") as info:
        read_role_password(role(password_env="P", password_file="/f"), {"P": SECRET})
    assert SECRET not in str(info.value)
    assert "etl_loader" in str(info.value)


def test_role_errors_never_contain_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(SECRET * (MAX_SECRET_FILE_BYTES // len(SECRET) + 1))
    for cfg, environ in (
        (role(password_file=str(path)), {}),
        (role(password_env="MISSING"), {"OTHER": SECRET}),
    ):
        with pytest.raises(SecretSourceError) as info:
            read_role_password(cfg, environ)
        assert SECRET not in str(info.value) and SECRET not in repr(info.value)


def test_upstream_messages_unchanged_by_role_support() -> None:
    # The [upstream] credential's messages carry no role prefix.
    with pytest.raises(SecretSourceError) as info:
        read_upstream_password(upstream(password_env="PGW_PASS"), {})
    assert str(info.value) == "upstream password environment variable PGW_PASS is not set"
