"""Process helpers for the benchmarks: CPU time of a process tree, and child processes that
are always cleaned up.

CPU time comes from ``/proc/<pid>/stat`` (utime + stime, in clock ticks) summed over a
process and all of its descendants, found by scanning the ``ppid`` of every process in
``/proc``. Linux only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

CLK_TCK = os.sysconf("SC_CLK_TCK")


class ProcStat(NamedTuple):
    ppid: int
    cpu_ticks: int  # utime + stime
    start_time: int  # clock ticks after boot: tells a pid apart from a later reuse of it


def _parse_stat(text: str) -> ProcStat:
    """The fields we use from the text of ``/proc/<pid>/stat``."""
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return ProcStat(int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19]))


def read_stat(pid: int) -> ProcStat | None:
    try:
        return _parse_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def all_stats() -> dict[int, ProcStat]:
    """``{pid: ProcStat}`` for every process visible in /proc."""
    stats: dict[int, ProcStat] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                stats[int(entry.name)] = stat
    return stats


def process_tree(root: int, stats: Mapping[int, ProcStat] | None = None) -> list[int]:
    """``root`` followed by all of its live descendants."""
    stats = all_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.ppid, []).append(pid)
    tree: list[int] = []
    todo = [root] if root in stats else []
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of ``root`` and all its descendants, in seconds."""
    stats = all_stats()
    ticks = sum(stats[pid].cpu_ticks for pid in process_tree(root, stats))
    return ticks / CLK_TCK


def _identities(pids: Sequence[int]) -> dict[int, int]:
    """``{pid: start_time}`` of those pids still alive."""
    found: dict[int, int] = {}
    for pid in pids:
        stat = read_stat(pid)
        if stat is not None:
            found[pid] = stat.start_time
    return found


def _still_same(identities: Mapping[int, int]) -> list[int]:
    """The pids of ``identities`` that are still the very same processes."""
    alive = []
    for pid, start in identities.items():
        stat = read_stat(pid)
        if stat is not None and stat.start_time == start:
            alive.append(pid)
    return alive


def _signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class ManagedProcess:
    """A child process in its own session, its output in a log file, stopped with its tree.

    The child gets a new session (so a terminal's Ctrl-C reaches only this script, which
    then stops the child in order). :meth:`stop` sends ``stop_signal`` to the process group
    and to every descendant it had, waits until they are all gone, then SIGKILLs whatever
    is left of them (matched by pid *and* start time, never a reused pid). Idempotent.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.stop_signal = stop_signal
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was not started")
        return self._popen.pid

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )

    def exit_code(self) -> int | None:
        """None while running."""
        return None if self._popen is None else self._popen.poll()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return
        tree = _identities(process_tree(popen.pid))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, self.stop_signal)
        for pid in _still_same(tree):
            _signal_pid(pid, self.stop_signal)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (popen.poll() is None or _still_same(tree)):
            time.sleep(0.05)
        for pid in _still_same(tree):
            _signal_pid(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=5)
