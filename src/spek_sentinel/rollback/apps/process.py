"""The process backend: spek-sentinel runs the application's process itself.

For an application that is neither a container nor a service some other manager runs: the
sentinel starts the release's process, stops it, and knows which release is in place because it
put it there. ``command`` is the argv of a release running in the foreground (``python -m
spek_app serve --version {release}``); ``{release}`` in any argument is replaced by the release,
which stays one argument (nothing runs through a shell), and the release is also in the
environment as ``SPEK_SENTINEL_RELEASE``. The process gets the environment the table gives it
(``env``; secrets by ``env_from``, read from the sentinel's environment), never the sentinel's
own, runs in its own session (so its own process group, out of reach of a Ctrl-C meant for the
sentinel) and writes its output to a log file.

State, in ``state_dir``, one set of files per ``name``:

- ``<name>.json``: the release in place and, while it runs, its pid and start time (psutil's
  ``create_time``, which tells our process from a later one that got the same pid);
- ``<name>.pid``: the pid alone while it runs, for a ``kind = "process"`` probe or a human;
- ``<name>.log``: the process's stdout and stderr, appended;
- ``<name>.lock``: held during each operation: a manual rollback and the daemon never act on
  the same application at once.

Operations:

- ``current_release``: the release recorded in place; never guessed from a process.
- ``target_exists``: the release is in ``releases``, or ``target_exists_command`` exits 0.
- ``stop``: SIGTERM to the process group (the release's children too), SIGKILL to whatever is
  left after ``stop_grace``. Nothing is signalled that is not ours: a record whose pid is gone,
  or belongs to a process started after ours (a reused pid), is a stale pid file, removed; the
  application is then already stopped. Processes left in our group after the process itself
  died (a crashed server's workers) are stopped too.
- ``rollback_to``: stops a running release first, then records the target in place, stopped;
  ``start`` runs it (the plan's "restart" step). The release already in place: nothing to do.
- ``start``: runs the release in place and returns once ``ready_url`` answers 2xx or, without
  one, once the process has stayed up ``start_check`` seconds. A process that exits before that
  is a failed start (crash at start), reported with its exit status and its log's tail; one
  still not ready after ``start_timeout`` is a failed start left running.

A process the sentinel started is its child: it is reaped here, so an exited release never
lingers as a zombie that would look alive. If the sentinel restarts, the release keeps running
and the record still finds it. Under systemd, give the sentinel's unit ``KillMode=process`` (or
``mixed``) if a sentinel restart must not stop the application with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import httpx
import psutil

from spek_sentinel.rollback.apps.base import (
    DEFAULT_ENV,
    AppBackendError,
    AppState,
    CommandEnv,
    CommandFailedError,
    StepOutput,
    TargetMissingError,
    check_release,
    output_tail,
    run_command,
)
from spek_sentinel.secrets import redact

PLACEHOLDER = "{release}"
RELEASE_ENV = "SPEK_SENTINEL_RELEASE"
_POLL = 0.05  # seconds between looks at a stopping or starting process
_KILL_WAIT = 5.0  # seconds for the kernel to remove a SIGKILLed group
_SAME_START = 0.05  # seconds: create_time read twice differs by less (clock ticks)
_LOG_TAIL_BYTES = 64 * 1024
_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)

# Processes this interpreter started, by pid: polled to reap them and learn their exit status.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_CHILDREN_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class ProcessAppSettings:
    command: tuple[str, ...]
    state_dir: Path
    name: str = "app"
    releases: tuple[str, ...] | None = None  # the releases there are; or:
    target_exists_command: tuple[str, ...] | None = None  # exit 0: the release exists
    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ENV))  # the complete env
    secrets: tuple[str, ...] = ()  # values to redact from output (those of env_from)
    stop_grace: float = 10.0  # seconds between SIGTERM and SIGKILL
    ready_url: str | None = None  # start returns once this answers 2xx
    start_check: float = 2.0  # without ready_url: seconds the process must stay up
    start_timeout: float = 60.0  # seconds to wait for ready_url


@dataclass(frozen=True, slots=True)
class _Record:
    release: str | None = None
    pid: int | None = None  # the process (and its group: it leads its own session)
    created: float | None = None  # its psutil create_time
    started_at: float | None = None  # wall clock, when we started it
    previous: str | None = None  # the release before the last switch, for messages

    def to_json(self) -> str:
        return json.dumps(
            {
                "release": self.release,
                "pid": self.pid,
                "created": self.created,
                "started_at": self.started_at,
                "previous": self.previous,
            },
            sort_keys=True,
        )

    def stopped(self) -> _Record:
        return replace(self, pid=None, created=None, started_at=None)


class ProcessBackend:
    def __init__(self, settings: ProcessAppSettings) -> None:
        self._settings = settings
        self._name = settings.name
        directory = settings.state_dir
        self._record_path = directory / f"{self._name}.json"
        self._pid_path = directory / f"{self._name}.pid"
        self._lock_path = directory / f"{self._name}.lock"
        self.log_path = directory / f"{self._name}.log"
        self._setup = CommandEnv(cwd=settings.cwd, env=settings.env, secrets=settings.secrets)

    @property
    def description(self) -> str:
        return f"process {self._name} ({self._redact(shlex.join(self._settings.command))})"

    @property
    def pid_file(self) -> Path:
        return self._pid_path

    # --- the contract ---

    def current_release(self, timeout: float = 30.0) -> str:
        record = self._load("current release")
        if record.release is None:
            raise AppBackendError(
                "current release",
                f"no release is recorded in {self._record_path}: spek-sentinel has not put one "
                "in place yet",
                state=AppState.UNCHANGED,
                changed=False,
            )
        return record.release

    def target_exists(self, release: str, timeout: float = 30.0) -> bool:
        if check_release(release) is not None:
            return False
        if self._settings.releases is not None:
            return release in self._settings.releases
        argv = self._settings.target_exists_command
        assert argv is not None, "the config requires releases or target_exists_command"
        result = run_command(
            _substitute(argv, release), self._setup, timeout, extra_env={RELEASE_ENV: release}
        )
        if result.exit_code is None:  # could not start or timed out: no answer is not a "no"
            raise CommandFailedError("pre-flight", result, state=AppState.UNCHANGED, changed=False)
        return result.exit_code == 0

    def stop(self, timeout: float = 60.0) -> StepOutput:
        started = time.monotonic()
        deadline = started + timeout
        with self._locked("stop", deadline):
            record = self._load("stop")
            action, changed = self._stop(record, "stop", deadline)
        return StepOutput(action, (), "", time.monotonic() - started, changed=changed)

    def rollback_to(self, release: str, timeout: float = 600.0) -> StepOutput:
        started = time.monotonic()
        deadline = started + timeout
        op = f"rollback to {release}"
        why = check_release(release)
        if why is None and not self.target_exists(release, _left(deadline)):
            known = self._settings.releases
            why = (
                f"is not one of the releases configured ({', '.join(known)})"
                if known is not None
                else "does not exist (target_exists_command said no)"
            )
        if why is not None:
            raise TargetMissingError(
                op, f"release {release!r} {why}", state=AppState.UNCHANGED, changed=False
            )
        with self._locked(op, deadline):
            record = self._load(op)
            if record.release == release:
                return StepOutput(
                    f"{release} is already in place; nothing to do",
                    (),
                    "",
                    time.monotonic() - started,
                    changed=False,
                )
            stopped, changed = self._stop(record, op, deadline)
            self._save(replace(record.stopped(), release=release, previous=record.release))
        first = f"{stopped}; then " if changed else ""
        return StepOutput(
            f"{first}{release} in place (was {record.release or 'none'}); start runs it",
            (),
            "",
            time.monotonic() - started,
            changed=True,
        )

    def start(self, timeout: float = 60.0) -> StepOutput:
        started = time.monotonic()
        deadline = started + timeout
        with self._locked("start", deadline):
            record = self._load("start")
            if record.release is None:
                raise AppBackendError(
                    "start",
                    "no release is in place to start (roll back or deploy to one first)",
                    state=AppState.STOPPED,
                    changed=False,
                )
            if self._ours(record) is not None:
                return StepOutput(
                    f"{record.release} already running (pid {record.pid})",
                    (),
                    "",
                    time.monotonic() - started,
                    changed=False,
                )
            # a crashed process's leftovers (its workers) would hold its port
            cleared, _ = self._stop(record, "start", deadline)
            return self._launch(self._load("start"), cleared, started, deadline)

    # --- what the demo and operators read ---

    def running_pid(self) -> int | None:
        """The pid of the release's process while it runs, else None."""
        with contextlib.suppress(AppBackendError):
            record = self._load("status")
            if self._ours(record) is not None:
                return record.pid
        return None

    # --- starting ---

    def _launch(self, record: _Record, cleared: str, started: float, deadline: float) -> StepOutput:
        release = record.release
        assert release is not None
        argv = _substitute(self._settings.command, release)
        shown = self._redact(shlex.join(argv))
        env = {**self._settings.env, RELEASE_ENV: release}
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            with self.log_path.open("ab") as log:
                log.write(f"--- spek-sentinel starts {release}: {shown}\n".encode())
                log.flush()
                popen = subprocess.Popen(
                    list(argv),
                    cwd=self._settings.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop signals all of it
                )
        except OSError as exc:
            raise AppBackendError(
                "start",
                self._redact(f"`{shown}` could not start: {exc.strerror or exc}"),
                state=AppState.STOPPED,
                changed=False,
            ) from None
        with _CHILDREN_LOCK:
            _CHILDREN[popen.pid] = popen
        created = _create_time(popen.pid)
        record = replace(record, pid=popen.pid, created=created, started_at=time.time())
        self._save(record)
        _write_atomic(self._pid_path, f"{popen.pid}\n")
        exited, ready = self._wait_started(popen, started, deadline)
        tail = self._log_tail(offset)
        took = time.monotonic() - started
        if exited is not None:
            self._stop(record, "start", deadline)  # what it left behind in its group
            self._forget(record)
            raise AppBackendError(
                "start",
                f"{release} {_describe_exit(exited)} {took:.1f}s after it was started "
                "(crashed at start)",
                state=AppState.STOPPED,
                changed=True,
                output=tail,
            )
        if ready is None:
            raise AppBackendError(
                "start",
                f"{release} runs (pid {popen.pid}) but {self._settings.ready_url} did not answer"
                f" 2xx within {took:.0f}s",
                state=AppState.RUNNING,
                changed=True,
                output=tail,
            )
        before = f"{cleared}; " if cleared.startswith("stopped") else ""
        return StepOutput(
            f"{before}started {release} as pid {popen.pid} (its own process group); {ready}",
            (shown,),
            tail,
            took,
            changed=True,
        )

    def _wait_started(
        self, popen: subprocess.Popen[bytes], started: float, deadline: float
    ) -> tuple[int | None, str | None]:
        """(exit status if it exited first, else None; what made it count as started, or None
        when it did not get there in time)."""
        settings = self._settings
        url = settings.ready_url
        limit = min(deadline, started + (settings.start_timeout if url else settings.start_check))
        pause = threading.Event()
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                code = _poll(popen)
                if code is not None:
                    return code, None
                now = time.monotonic()
                if url is not None:
                    with contextlib.suppress(httpx.HTTPError):
                        answer = client.get(url, timeout=max(0.1, min(2.0, limit - now)))
                        if 200 <= answer.status_code < 300:
                            return None, f"{url} answered {answer.status_code} after " + (
                                f"{time.monotonic() - started:.1f}s"
                            )
                elif now - started >= settings.start_check:
                    return None, f"still running after {settings.start_check:g}s"
                if time.monotonic() >= limit:
                    return None, None
                pause.wait(_POLL if url is None else 0.1)

    # --- stopping ---

    def _stop(self, record: _Record, op: str, deadline: float) -> tuple[str, bool]:
        """Stop the record's process group; (what happened, whether anything was signalled)."""
        if record.pid is None:
            return "not running", False
        pgid = record.pid
        members = self._members(record)
        if not members:
            code = _reap(pgid)
            how = f" ({_describe_exit(code)})" if code is not None else ""
            self._forget(record)
            return f"not running: pid {pgid} had exited{how}; stale pid file removed", False
        leader_alive = any(member.pid == pgid for member in members)
        began = time.monotonic()
        _signal_group(pgid, signal.SIGTERM)
        grace = max(0.0, min(self._settings.stop_grace, deadline - began))
        left, code = self._wait_gone(record, began + grace)
        how = f"SIGTERM; exited after {time.monotonic() - began:.1f}s"
        if left:
            _signal_group(pgid, signal.SIGKILL)
            left, killed = self._wait_gone(record, time.monotonic() + _KILL_WAIT)
            code = code if code is not None else killed
            how = f"SIGTERM, then SIGKILL after {grace:g}s"
        if left:
            raise AppBackendError(
                op,
                f"process group {pgid} still has {_count(len(left))} after SIGKILL "
                f"(pids {', '.join(str(p.pid) for p in left)})",
                state=AppState.UNKNOWN,
                changed=True,
            )
        self._forget(record)
        what = (
            f"pid {pgid} and its process group ({_count(len(members))})"
            if leader_alive
            else f"{_count(len(members))} left in the group of exited pid {pgid}"
        )
        exit_note = f", {_describe_exit(code)}" if code is not None and leader_alive else ""
        return f"stopped {record.release or 'the application'}: {what}, {how}{exit_note}", True

    def _wait_gone(self, record: _Record, until: float) -> tuple[list[psutil.Process], int | None]:
        """The group's processes still alive at ``until`` (or none, earlier), and our
        process's exit status if it was reaped meanwhile."""
        pause = threading.Event()
        code: int | None = None
        while True:
            assert record.pid is not None
            reaped = _reap(record.pid)
            code = reaped if reaped is not None else code
            left = self._members(record)
            if not left:  # a zombie is not a member: reap it now for its exit status
                reaped = _reap_soon(record.pid, until)
                return left, reaped if reaped is not None else code
            if time.monotonic() >= until:
                return left, code
            pause.wait(_POLL)

    def _ours(self, record: _Record) -> psutil.Process | None:
        """The record's process, alive, if it is the one we started (not a reused pid)."""
        if record.pid is None:
            return None
        _reap(record.pid)
        try:
            process = psutil.Process(record.pid)
            if not _same_start(record, process.create_time()):
                return None
            return None if process.status() in _GONE else process
        except psutil.NoSuchProcess:
            return None

    def _members(self, record: _Record) -> list[psutil.Process]:
        """The live processes of our process group, or none when the group is not ours.

        The group's id is our process's pid. While any process is in that group, Linux does not
        give the number to a new process; so a process with that pid that is not ours means our
        group is gone, and one that is ours means the group is ours. With no process holding the
        pid, whatever is left in the group was started by ours (its children)."""
        pgid = record.pid
        assert pgid is not None
        _reap(pgid)
        try:
            holder = psutil.Process(pgid)
            holder_created = holder.create_time()
        except psutil.NoSuchProcess:
            holder_created = None
        if holder_created is not None and not _same_start(record, holder_created):
            return []  # the pid is someone else's now
        found = []
        for process in psutil.process_iter():
            try:
                if os.getpgid(process.pid) == pgid and process.status() not in _GONE:
                    found.append(process)
            except (OSError, psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # gone meanwhile, or not ours to look at
        return found

    # --- the record ---

    @contextlib.contextmanager
    def _locked(self, op: str, deadline: float) -> Iterator[None]:
        self._settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        pause = threading.Event()
        with self._lock_path.open("a") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise AppBackendError(
                            op,
                            f"another operation on {self._name} holds {self._lock_path}",
                            state=AppState.UNCHANGED,
                            changed=False,
                        ) from None
                    pause.wait(_POLL)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _load(self, op: str) -> _Record:
        try:
            raw = json.loads(self._record_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return _Record()
        except (OSError, ValueError) as exc:
            raise AppBackendError(
                op,
                f"cannot read {self._record_path}: {exc}",
                state=AppState.UNKNOWN,
                changed=False,
            ) from None
        try:
            return _Record(
                release=_text(raw.get("release")),
                pid=_integer(raw.get("pid")),
                created=_number(raw.get("created")),
                started_at=_number(raw.get("started_at")),
                previous=_text(raw.get("previous")),
            )
        except (TypeError, AttributeError) as exc:
            raise AppBackendError(
                op,
                f"{self._record_path} is not a record spek-sentinel wrote: {exc}",
                state=AppState.UNKNOWN,
                changed=False,
            ) from None

    def _save(self, record: _Record) -> None:
        _write_atomic(self._record_path, record.to_json() + "\n")

    def _forget(self, record: _Record) -> None:
        """The process is gone: the record keeps the release, the pid file goes."""
        self._save(record.stopped())
        with contextlib.suppress(FileNotFoundError):
            self._pid_path.unlink()

    def _log_tail(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(offset, size - _LOG_TAIL_BYTES))
                text = log.read().decode(errors="replace")
        except OSError:
            return ""
        return output_tail(text, self._setup.all_secrets())

    def _redact(self, text: str) -> str:
        return redact(text, self._setup.all_secrets())


def _substitute(argv: tuple[str, ...], release: str) -> tuple[str, ...]:
    return tuple(arg.replace(PLACEHOLDER, release) for arg in argv)


def _same_start(record: _Record, created: float) -> bool:
    return record.created is not None and abs(created - record.created) <= _SAME_START


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"expected a string, found {value!r}")


def _integer(value: object) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise TypeError(f"expected an integer, found {value!r}")


def _number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"expected a number, found {value!r}")


def _create_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return None


def _poll(popen: subprocess.Popen[bytes]) -> int | None:
    code = popen.poll()
    if code is not None:
        with _CHILDREN_LOCK:
            _CHILDREN.pop(popen.pid, None)
    return code


def _reap(pid: int) -> int | None:
    """Reap ``pid`` if it is an exited child of this process; its exit status then, else None."""
    with _CHILDREN_LOCK:
        popen = _CHILDREN.get(pid)
    if popen is not None:
        return _poll(popen)
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if reaped else None


def _reap_soon(pid: int, until: float) -> int | None:
    """``_reap`` a child that has just died: a threaded process shows as a zombie a moment
    before its last thread is gone and it can be reaped."""
    pause = threading.Event()
    limit = max(until, time.monotonic() + 1.0)
    while True:
        code = _reap(pid)
        with _CHILDREN_LOCK:
            waiting = pid in _CHILDREN
        if code is not None or not waiting or time.monotonic() >= limit:
            return code
        pause.wait(_POLL / 5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _count(processes: int) -> str:
    return f"{processes} process" if processes == 1 else f"{processes} processes"


def _describe_exit(code: int) -> str:
    return f"exited with {code}" if code >= 0 else f"was killed by signal {-code}"


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    handle: IO[str]
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
