"""Style gates that run with the suite: ruff over the tree, mypy --strict over gateway/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_clean() -> None:
    result = run("ruff", "check", "gateway", "tests", "benchmarks", "loadtest")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_clean() -> None:
    result = run("mypy", "--strict", "gateway")
    assert result.returncode == 0, result.stdout + result.stderr
