"""The supervisor: forks the workers, watches them, and turns signals into actions.

Modelled on gunicorn's arbiter. Signal handlers only queue the signal and wake the main
loop through a pipe; the loop then dispatches it, reaps exited children, kills workers
whose heartbeat file went stale, and tops the worker count back up.

- TERM: forward TERM (workers drain), wait ``graceful_timeout``, then KILL what is left.
- INT / QUIT: forward INT (workers close sessions now), short wait, then KILL.
- HUP: validate the configuration file; if it is good, tell every worker to reload it
  (sessions stay up) and adjust the worker count; if not, log why and keep running.
- A worker that exits with ``WORKER_BOOT_ERROR`` halts the supervisor: respawning a
  worker that cannot bind or cannot read its secrets would only loop.

The supervisor never starts an event loop or a thread, so forking stays safe.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass

import orjson

from gateway.config import Config, ConfigError, default_pid_file, load_config
from gateway.identity.secrets import (
    SecretSourceError,
    read_role_password,
    read_upstream_password,
)
from gateway.server.cancel import MAX_WORKERS
from gateway.server.worker import WORKER_BOOT_ERROR, listen_socket, run_worker

log = logging.getLogger("pgwarden.supervisor")

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD)
_FAST_STOP_WAIT = 5.0


def check_secrets(config: Config) -> None:
    """Read every upstream secret once, so that a missing one stops us before forking."""
    if config.roles:
        for role in config.roles:
            read_role_password(role)
    else:
        read_upstream_password(config.upstream)


class HaltServer(BaseException):
    """Stop the supervisor; a BaseException so application code cannot swallow it."""

    def __init__(self, reason: str, exit_status: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_status = exit_status


@dataclass(slots=True)
class WorkerProcess:
    index: int
    pid: int
    heartbeat: str
    started: float


class Supervisor:
    def __init__(self, config: Config, config_path: str) -> None:
        self.config = config
        self.config_path = config_path
        self.workers: dict[int, WorkerProcess] = {}
        self.signal_queue: list[int] = []
        self.stopping = False
        self._own_run_dir = not config.server.run_dir
        self.run_dir = config.server.run_dir or tempfile.mkdtemp(prefix="pgwarden-")
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        self._pipe_r, self._pipe_w = os.pipe()
        for fd in (self._pipe_r, self._pipe_w):
            os.set_blocking(fd, False)

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def pid_file(self) -> str:
        server = self.config.server
        return server.pid_file or default_pid_file(server.listen_port)

    def _write_pid_file(self) -> None:
        # Written atomically: `pgwarden reload` must never read a half-written pid.
        path = self.pid_file
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as fh:
                # line 2: where workers write their stats (pgwarden stats)
                fh.write(f"{os.getpid()}\n{self.run_dir}\n")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write pid file %s (pgwarden reload needs it): %s", path, exc)

    def _remove_pid_file(self) -> None:
        with contextlib.suppress(OSError):
            with open(self.pid_file) as fh:
                if fh.readline().strip() != str(os.getpid()):
                    return  # another supervisor's by now
            os.unlink(self.pid_file)

    def run(self) -> int:
        self._preflight()
        self._write_pid_file()
        for sig in _SIGNALS:
            signal.signal(sig, self._on_signal)
        log.info(
            "pgwarden supervisor %d: %d workers on %s:%d -> upstream %s:%d",
            os.getpid(), self.config.effective_workers(),
            self.config.server.listen_host, self.config.server.listen_port,
            self.config.upstream.host, self.config.upstream.port,
        )
        try:
            self._spawn_missing()
            while True:
                self._sleep()
                self._dispatch_signals()
                self._reap()
                if self.stopping:
                    break
                self._check_heartbeats()
                self._spawn_missing()
        except HaltServer as halt:
            log.error("halting: %s", halt.reason)
            self._stop(graceful=False)
            return halt.exit_status
        finally:
            self._cleanup()
        return 0

    def _preflight(self) -> None:
        """Fail before forking on what every worker would fail on anyway."""
        cfg = self.config.server
        if self.config.effective_workers() > MAX_WORKERS + 1:
            raise HaltServer(f"at most {MAX_WORKERS + 1} workers are supported", 2)
        try:
            sock = listen_socket(cfg.listen_host, cfg.listen_port, 1)
        except OSError as exc:
            raise HaltServer(
                f"cannot listen on {cfg.listen_host}:{cfg.listen_port}: {exc}", 2
            ) from exc
        # Closed at once: a listening socket that never accepts would be handed a share of
        # the connections by SO_REUSEPORT.
        sock.close()
        try:
            check_secrets(self.config)
        except SecretSourceError as exc:
            raise HaltServer(str(exc), 2) from exc

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signal_queue.append(signum)
        with contextlib.suppress(OSError):
            os.write(self._pipe_w, b".")

    def _sleep(self) -> None:
        try:
            ready, _, _ = select.select([self._pipe_r], [], [], 1.0)
            if ready:
                while os.read(self._pipe_r, 1024):
                    pass
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EINTR):
                raise

    def _dispatch_signals(self) -> None:
        while self.signal_queue:
            sig = self.signal_queue.pop(0)
            if sig == signal.SIGCHLD:
                continue
            if sig == signal.SIGHUP:
                self._reload()
            elif sig == signal.SIGTERM:
                log.info(
                    "TERM: draining workers (up to %.0fs)", self.config.server.graceful_timeout
                )
                self._stop(graceful=True)
                self.stopping = True
            else:
                log.info("%s: stopping now", signal.Signals(sig).name)
                self._stop(graceful=False)
                self.stopping = True

    # -- workers ------------------------------------------------------------------------

    def _spawn_missing(self) -> None:
        wanted = self.config.effective_workers()
        for index in range(wanted):
            if index not in self.workers:
                self._spawn(index)
        for index in sorted(self.workers):
            if index >= wanted:
                self._kill(self.workers[index], signal.SIGTERM)

    def _spawn(self, index: int) -> None:
        heartbeat = os.path.join(self.run_dir, f"worker-{index}.heartbeat")
        with open(heartbeat, "w"):
            pass
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                for sig in _SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                os.close(self._pipe_r)
                os.close(self._pipe_w)
                status = run_worker(
                    self.config, self.config_path, self.run_dir, index, heartbeat
                )
            except BaseException:
                log.exception("worker %d crashed", index)
            finally:
                logging.shutdown()
                os._exit(status)
        self.workers[index] = WorkerProcess(index, pid, heartbeat, time.monotonic())
        log.info("spawned worker %d (pid %d)", index, pid)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.workers.values() if w.pid == pid), None)
            if worker is None:
                continue
            del self.workers[worker.index]
            code = os.waitstatus_to_exitcode(status)
            if code == WORKER_BOOT_ERROR and not self.stopping:
                raise HaltServer(f"worker {worker.index} could not boot", WORKER_BOOT_ERROR)
            if not self.stopping:
                log.warning("worker %d (pid %d) exited with %s; replacing it",
                            worker.index, pid, code)

    def _check_heartbeats(self) -> None:
        limit = self.config.server.heartbeat_timeout
        now = time.time()
        for worker in list(self.workers.values()):
            try:
                age = now - os.stat(worker.heartbeat).st_mtime
            except FileNotFoundError:
                continue
            if age > limit:
                log.error("worker %d (pid %d) missed its heartbeat for %.0fs; killing it",
                          worker.index, worker.pid, age)
                self._kill(worker, signal.SIGKILL)

    def _kill(self, worker: WorkerProcess, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, sig)

    def _stop(self, graceful: bool) -> None:
        self.stopping = True
        sig = signal.SIGTERM if graceful else signal.SIGINT
        for worker in list(self.workers.values()):
            self._kill(worker, sig)
        wait = self.config.server.graceful_timeout + 1.0 if graceful else _FAST_STOP_WAIT
        deadline = time.monotonic() + wait
        while self.workers and time.monotonic() < deadline:
            time.sleep(0.05)
            self._reap_quietly()
        for worker in list(self.workers.values()):
            log.warning("worker %d did not stop in time; killing it", worker.index)
            self._kill(worker, signal.SIGKILL)
        while self.workers and time.monotonic() < deadline + 5.0:
            time.sleep(0.05)
            self._reap_quietly()

    def _reap_quietly(self) -> None:
        with contextlib.suppress(HaltServer):
            self._reap()

    def _reload(self) -> None:
        try:
            config = load_config(self.config_path)
            check_secrets(config)
        except (ConfigError, SecretSourceError, OSError) as exc:
            log.error("HUP: configuration not reloaded, keeping the running one:\n%s", exc)
            return
        old = self.config.server
        new = config.server
        if (old.listen_host, old.listen_port) != (new.listen_host, new.listen_port):
            log.warning("HUP: a new listen address needs a restart; keeping %s:%d",
                        old.listen_host, old.listen_port)
        self.config = config
        for worker in self.workers.values():
            self._kill(worker, signal.SIGHUP)
        log.info("HUP: configuration reloaded; %d workers told", len(self.workers))

    def _cleanup(self) -> None:
        self._remove_pid_file()
        for fd in (self._pipe_r, self._pipe_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(config: Config) -> None:
    level = getattr(logging, config.log.level.upper(), logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    if config.log.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
        )
    logging.basicConfig(level=level, handlers=[handler], force=True)


def serve(config: Config, config_path: str) -> int:
    """Run the gateway in the foreground until stopped. Returns the exit status."""
    configure_logging(config)
    try:
        return Supervisor(config, str(config_path)).run()
    except HaltServer as halt:
        log.error("%s", halt.reason)
        return halt.exit_status
