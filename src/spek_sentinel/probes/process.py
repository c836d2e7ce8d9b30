"""One local process (an application that does not run in a container): is it up, its RSS.

The process is found by ``pid_file``, by ``match`` (a regular expression searched in the
command line, arguments joined by spaces), or by both: then the pid file's process must also
match, which tells a stale pid file whose number was reused by another program.

- ``up``: 1 when the process exists and is not a zombie; 0 when it is not running: no such
  process, a zombie, a stale pid file, or no pid file at all (daemons remove it when they stop).
- ``rss``: resident set size in bytes; no data when the process is not running.

When ``match`` finds several processes, the oldest one is read (earliest start time): the
master or supervisor of a pre-forking server, which stays while its workers come and go. The
sentinel's own process never matches.

A pid file that cannot be read (permissions) or does not hold a number gives error samples.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from pathlib import Path

import psutil

from spek_sentinel.config.probes import ProcessProbe
from spek_sentinel.domain.errors import ProbeError
from spek_sentinel.probes.base import Failed

_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


class LocalProcessProbe:
    """Reads one process's liveness and resident memory with psutil, in a worker thread."""

    def __init__(
        self,
        *,
        name: str,
        interval: float,
        timeout: float,
        measures: Mapping[str, str],
        pid_file: Path | None,
        match: re.Pattern[str] | None,
    ) -> None:
        if pid_file is None and match is None:
            raise ValueError("a process probe needs pid_file, match, or both")
        self.name = name
        self.interval = interval
        self.timeout = timeout
        self.measures = dict(measures)
        self.pid_file = pid_file
        self.match = match

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(self.measures)

    async def collect(self) -> Mapping[str, float | Failed | None]:
        return await asyncio.to_thread(self._collect)

    async def aclose(self) -> None:
        return None

    def _collect(self) -> dict[str, float | Failed | None]:
        process = self._find()
        up = 0.0
        rss: float | Failed | None = None
        if process is not None:
            try:
                if process.status() not in _GONE:
                    up = 1.0
                    rss = float(process.memory_info().rss)
            except psutil.NoSuchProcess:
                up, rss = 0.0, None  # exited between finding and reading it
            except psutil.AccessDenied:
                rss = Failed(f"no permission to read the memory of pid {process.pid}")
        readings: dict[str, float | Failed | None] = {}
        for signal, measure in self.measures.items():
            readings[signal] = up if measure == "up" else rss
        return readings

    def _find(self) -> psutil.Process | None:
        if self.pid_file is not None:
            pid = self._read_pid_file(self.pid_file)
            if pid is None:
                return None
            try:
                process = psutil.Process(pid)
                if self.match is not None and not self._matches(process.cmdline()):
                    return None  # the number was reused by another program: stale pid file
            except psutil.NoSuchProcess:
                return None  # stale pid file
            except psutil.AccessDenied as exc:
                raise ProbeError(f"no permission to read the command line of pid {pid}") from exc
            return process
        return self._oldest_match()

    def _oldest_match(self) -> psutil.Process | None:
        own = os.getpid()
        found: list[tuple[float, int, psutil.Process]] = []
        for process in psutil.process_iter(["cmdline", "create_time"]):
            # attributes it may not read come back as None; zombies have no command line
            cmdline = process.info.get("cmdline")
            if process.pid == own or not cmdline or not self._matches(cmdline):
                continue
            found.append((process.info.get("create_time") or 0.0, process.pid, process))
        return min(found, key=lambda item: item[:2])[2] if found else None

    def _matches(self, cmdline: list[str]) -> bool:
        return self.match is not None and self.match.search(" ".join(cmdline)) is not None

    @staticmethod
    def _read_pid_file(path: Path) -> int | None:
        try:
            text = path.read_text(errors="replace").strip()
        except FileNotFoundError:
            return None  # no pid file: the daemon is not running (or never wrote one)
        except OSError as exc:
            raise ProbeError(f"cannot read pid file {path}: {exc.strerror or exc}") from exc
        first = text.split(maxsplit=1)[0] if text else ""
        if not first.isdigit() or int(first) <= 0:
            shown = text[:40]
            raise ProbeError(f"pid file {path} holds {shown!r}, not a process id")
        return int(first)


def build(
    name: str, model: ProcessProbe, interval: float, environ: Mapping[str, str]
) -> LocalProcessProbe:
    measures = {signal: spec.measure or "up" for signal, spec in model.signals.items()}
    return LocalProcessProbe(
        name=name,
        interval=interval,
        timeout=model.timeout,
        measures=measures,
        pid_file=Path(model.pid_file) if model.pid_file is not None else None,
        match=re.compile(model.match) if model.match is not None else None,
    )
