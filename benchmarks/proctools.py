"""Process helpers for the benchmarks: CPU time and memory of a process tree, and child
processes that are always cleaned up.

CPU time comes from ``/proc/<pid>/stat`` (utime + stime, in clock ticks) summed over a
process and all of its descendants, found by scanning the ``ppid`` of every process in
``/proc``. Memory is the sum over the same tree of ``Rss`` and ``Pss`` from
``/proc/<pid>/smaps_rollup`` (``VmRSS`` of ``/proc/<pid>/status`` when smaps_rollup is not
readable; Pss is then unknown). Linux only.
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
    user_ticks: int = 0  # utime alone (stime = cpu_ticks - user_ticks)


def _parse_stat(text: str) -> ProcStat:
    """The fields we use from the text of ``/proc/<pid>/stat``."""
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return ProcStat(int(fields[1]), utime + stime, int(fields[19]), utime)


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


class TreeMemory(NamedTuple):
    processes: int
    rss_bytes: int
    pss_bytes: int | None  # None when some process's smaps_rollup was not readable


def _kib_field(text: str, name: str) -> int | None:
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    return None


def process_memory(pid: int) -> tuple[int, int | None] | None:
    """``(rss_bytes, pss_bytes)`` of one process, or None if it is gone."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        rollup = ""
    rss = _kib_field(rollup, "Rss") if rollup else None
    if rss is not None:
        return rss, _kib_field(rollup, "Pss")
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    rss = _kib_field(status, "VmRSS")
    return None if rss is None else (rss, None)


def tree_memory(root: int) -> TreeMemory:
    """Summed Rss (and Pss when readable) of ``root`` and all its descendants."""
    count = rss_total = pss_total = 0
    pss_known = True
    for pid in process_tree(root):
        mem = process_memory(pid)
        if mem is None:
            continue
        count += 1
        rss_total += mem[0]
        if mem[1] is None:
            pss_known = False
        else:
            pss_total += mem[1]
    return TreeMemory(count, rss_total, pss_total if pss_known else None)


class CpuTimes(NamedTuple):
    user: float  # seconds
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    def __sub__(self, other: object) -> CpuTimes:
        assert isinstance(other, CpuTimes)
        return CpuTimes(self.user - other.user, self.system - other.system)


def tree_cpu_times(root: int) -> CpuTimes:
    """utime and stime of ``root`` and all its descendants, in seconds."""
    stats = all_stats()
    tree = [stats[pid] for pid in process_tree(root, stats)]
    user = sum(st.user_ticks for st in tree)
    total = sum(st.cpu_ticks for st in tree)
    return CpuTimes(user / CLK_TCK, (total - user) / CLK_TCK)


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

    def cpu_times(self) -> CpuTimes:
        return tree_cpu_times(self.pid)

    def memory(self) -> TreeMemory:
        return tree_memory(self.pid)

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
