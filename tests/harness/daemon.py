"""``spek-sentinel run`` as a real child process: started with ``python -m spek_sentinel.cli``,
its JSON log lines on stderr captured to a file, ready once /readyz answers 200, and always
killed at teardown (``DaemonProcess.close``, or the ``daemons`` fixture's factory)."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from harness import HarnessError, log_tail
from harness.wait import WaitTimeoutError, wait_until


def daemon_environ(secrets: Mapping[str, str]) -> dict[str, str]:
    """The test's environment without anything that would change the daemon's table or make
    it talk to systemd (overrides, the default config path, the notify socket), plus
    ``secrets``."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SPEK_SENTINEL_", "NOTIFY_SOCKET", "WATCHDOG_"))
    }
    environ.update(secrets)
    return environ


class DaemonProcess:
    """One ``spek-sentinel run -c CONFIG --log-json`` child; ``url`` is its ``[api] listen``."""

    def __init__(self, config: Path, port: int, secrets: Mapping[str, str], log_path: Path) -> None:
        self.config = config
        self.port = port
        self.environ = daemon_environ(secrets)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the daemon was not started"
        return self.proc.pid

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process without waiting for it to be ready."""
        if self.proc is not None and self.proc.poll() is None:
            raise HarnessError(f"the daemon (pid {self.proc.pid}) is still running")
        self._close_log()
        self._log = self.log_path.open("ab")
        command = [sys.executable, "-m", "spek_sentinel.cli", "run", "-c", str(self.config)]
        self.proc = subprocess.Popen(
            [*command, "--log-json"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=self.environ,
            start_new_session=True,  # a ^C to pytest is not a SIGINT to the daemon
        )
        return self.proc

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait until /readyz answers 200 (a probe has been evaluated)."""
        self.spawn()
        try:
            wait_until(
                self._ready,
                timeout=timeout,
                interval=0.1,
                message=f"spek-sentinel run on port {self.port} never became ready",
                ignore=(httpx.HTTPError,),
            )
        except (WaitTimeoutError, HarnessError) as exc:
            self.close()
            raise HarnessError(f"{exc}\n--- tail of {self.log_path} ---\n{self.tail()}") from exc

    def _ready(self) -> bool:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            raise HarnessError(f"spek-sentinel run exited early with {code}")
        return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200

    # -- talking to it ------------------------------------------------------------------------

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=5, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", timeout=5, **kwargs)

    def send(self, signum: signal.Signals) -> None:
        assert self.proc is not None and self.proc.poll() is None, "the daemon is not running"
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit code; fails the test when it does not exit in time (then kills it)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(
                f"spek-sentinel run did not exit within {timeout:g}s\n{self.tail()}", pytrace=False
            )

    def kill(self) -> None:
        """SIGKILL, as a crash would, and reap it: the pid is certainly gone afterwards."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()
        self._close_log()

    # -- what it logged -----------------------------------------------------------------------

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (a line that is not JSON, say a crash, is kept as text)."""
        lines = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                parsed = {"event": line, "level": "raw"}
            lines.append(parsed if isinstance(parsed, dict) else {"event": line, "level": "raw"})
        return lines

    def logged(self, text: str) -> list[dict[str, Any]]:
        """The log lines whose event contains ``text``."""
        return [line for line in self.logs() if text in str(line.get("event", ""))]

    def tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def close(self) -> None:
        self.kill()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def reap_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (a rollback command left running by a daemon
    that was SIGKILLed: the command runs in a session of its own)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
