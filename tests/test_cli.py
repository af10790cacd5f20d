"""gateway.cli: subcommands, output streams and exit codes."""

from __future__ import annotations

import argparse
import getpass
import io
import subprocess
import sys
import types
from pathlib import Path

import pytest

from gateway import __version__, cli
from gateway.config import Config
from gateway.identity.static_secrets import verify_secret

REPO = Path(__file__).resolve().parents[1]

VALID = """
[server]
workers = 2

[tls]
allow_plaintext_loopback = true

[upstream]
user = "app"
host = "db.example"
"""

INVALID = """
[server]
workers = "two"
listn_port = 1

[upstream]
user = "app"
"""


@pytest.fixture
def valid(tmp_path: Path) -> Path:
    path = tmp_path / "ok.toml"
    path.write_text(VALID.lstrip())
    return path


@pytest.fixture
def invalid(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(INVALID.lstrip())
    return path


def run_module(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


# --------------------------------------------------------------------------- check-config


def test_check_config_ok(valid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", "--config", str(valid)]) == 0
    out, err = capsys.readouterr()
    first, summary = out.splitlines()
    assert first == f"{valid}: OK"
    assert "listen 127.0.0.1:6432" in summary
    assert "2 workers" in summary
    assert "app@db.example:5432" in summary
    assert err == ""


def test_check_config_errors(invalid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", "--config", str(invalid)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{invalid}:2: server.workers: Expected int, got str",
        f"{invalid}:3: server.listn_port: unknown key 'listn_port' (did you mean 'listen_port'?)",
    ]


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", "--config", str(tmp_path / "none.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_check_config_as_a_process(valid: Path, invalid: Path) -> None:
    ok = run_module("check-config", "--config", str(valid))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"{valid}: OK\n")

    bad = run_module("check-config", "--config", str(invalid))
    assert bad.returncode == 2
    assert f"{invalid}:2: server.workers:" in bad.stderr


def test_check_config_requires_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config"]) == 2
    assert "--config" in capsys.readouterr().err


# --------------------------------------------------------------------------- hash-secret


def test_hash_secret_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("töp secret\n"))
    assert cli.main(["hash-secret"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("scrypt$ln=15,r=8,p=1$")
    assert verify_secret(out, "töp secret")  # exactly one trailing newline stripped
    assert not verify_secret(out, "töp secret\n")


def test_hash_secret_as_a_process() -> None:
    result = run_module("hash-secret", stdin="abc\n")
    assert result.returncode == 0, result.stderr
    assert verify_secret(result.stdout.strip(), "abc")
    assert "abc" not in result.stdout + result.stderr


def test_hash_secret_empty_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert cli.main(["hash-secret"]) == 2
    assert "empty" in capsys.readouterr().err


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_hash_secret_prompts_on_a_tty(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(["typed", "typed"])
    monkeypatch.setattr(sys, "stdin", FakeTty())
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
    assert cli.main(["hash-secret"]) == 0
    assert verify_secret(capsys.readouterr().out.strip(), "typed")


def test_hash_secret_prompt_mismatch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(["one", "two"])
    monkeypatch.setattr(sys, "stdin", FakeTty())
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
    assert cli.main(["hash-secret"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "do not match" in err


# --------------------------------------------------------------------------- serve / demo


def test_serve_loads_config_and_delegates(valid: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Config, str]] = []

    def serve(config: Config, config_path: str) -> int:
        calls.append((config, config_path))
        return 0

    fake = types.ModuleType("gateway.server.supervisor")
    fake.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gateway.server.supervisor", fake)
    assert cli.main(["serve", "--config", str(valid)]) == 0
    [(config, path)] = calls
    assert config.upstream.user == "app"
    assert path == str(valid)


def test_serve_refuses_invalid_config_before_importing_the_server(
    invalid: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = types.ModuleType("gateway.server.supervisor")
    fake.serve = lambda *a: pytest.fail("serve() must not run")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gateway.server.supervisor", fake)
    assert cli.main(["serve", "--config", str(invalid)]) == 2
    assert "server.workers" in capsys.readouterr().err


def test_demo_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[argparse.Namespace] = []

    def run_demo(args: argparse.Namespace) -> int:
        seen.append(args)
        return 0

    fake = types.ModuleType("gateway.demo")
    fake.run_demo = run_demo  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gateway.demo", fake)

    assert cli.main(["demo"]) == 0
    # No --dir: None tells the demo to use a temp dir and remove it on exit.
    assert (seen[0].port, seen[0].workers, seen[0].dir) == (6432, 1, None)

    argv = ["demo", "--port", "7000", "--workers", "3", "--dir", str(tmp_path)]
    assert cli.main(argv) == 0
    assert (seen[1].port, seen[1].workers, seen[1].dir) == (7000, 3, str(tmp_path))


# --------------------------------------------------------------------------- misc


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pgwarden {__version__}"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: pgwarden" in capsys.readouterr().err


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("serve", "check-config", "hash-secret", "demo"):
        assert command in out


def test_cli_does_not_import_asyncio() -> None:
    # check-config and hash-secret must stay light: the server is imported lazily.
    code = "import sys, gateway.cli; sys.exit('asyncio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
