"""A real Alertmanager routing every alert to a webhook receiver the tests read, and stubs.

``alertmanager`` (session fixture) starts /usr/bin/prometheus-alertmanager with a temp config
and storage on a free 127.0.0.1 port, clustering off, grouping every alert on its own and
flushing fast (``group_wait``/``group_interval`` well under a second), sending every
notification, ``resolved`` ones too, to ``WebhookReceiver``: a small HTTP server in a thread
that records Alertmanager's webhook payloads. Tests tell their alerts apart by a unique label.

``StatusServer`` answers every request with a fixed status and records it, for the failure
modes a real Alertmanager cannot be made to show on demand.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Self

import httpx
import pytest

from harness import HarnessError, log_tail
from harness.ports import free_port
from harness.wait import WaitTimeoutError, wait_until

_INSTALL_HINT = (
    "install the Debian package `prometheus-alertmanager` (apt-get install prometheus-alertmanager)"
)
GROUP_WAIT = "200ms"
GROUP_INTERVAL = "500ms"


def find_alertmanager() -> Path:
    for candidate in (shutil.which("prometheus-alertmanager"), shutil.which("alertmanager")):
        if candidate:
            return Path(candidate)
    if Path("/usr/bin/prometheus-alertmanager").is_file():
        return Path("/usr/bin/prometheus-alertmanager")
    raise HarnessError(
        f"`prometheus-alertmanager` not found on PATH or in /usr/bin; {_INSTALL_HINT}"
    )


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Server:
    """A threaded HTTP server on 127.0.0.1 passing every request to ``handle``."""

    def __init__(self, handle: Callable[[BaseHTTPRequestHandler, Recorded], None]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                handle(self, Recorded(self.command, self.path, dict(self.headers.items()), body))

            def do_GET(self) -> None:
                self._any()

            def do_POST(self) -> None:
                self._any()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _answer(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "text/plain; charset=utf-8")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class WebhookReceiver(_Server):
    """Records the JSON payloads Alertmanager's webhook notifier posts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._payloads: list[dict[str, Any]] = []
        super().__init__(self._record)

    def _record(self, handler: BaseHTTPRequestHandler, request: Recorded) -> None:
        try:
            payload = json.loads(request.body)
        except ValueError:
            payload = {"unparsable": request.body.decode(errors="replace")}
        with self._lock:
            self._payloads.append(payload)
        _answer(handler, 200, b"ok\n")

    @property
    def payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._payloads)

    def notifications(self, **labels: str) -> list[dict[str, Any]]:
        """Payloads holding an alert with all of ``labels``."""
        return [
            payload
            for payload in self.payloads
            if any(
                all(alert.get("labels", {}).get(k) == v for k, v in labels.items())
                for alert in payload.get("alerts", [])
            )
        ]

    def wait_for(self, status: str, timeout: float = 15.0, **labels: str) -> dict[str, Any]:
        """The first notification with ``status`` (firing, resolved) about ``labels``."""

        def found() -> dict[str, Any]:
            for payload in self.notifications(**labels):
                if payload.get("status") == status:
                    return payload
            return {}  # not yet

        result: dict[str, Any] = wait_until(
            found,
            timeout=timeout,
            message=f"the receiver got no {status!r} notification for {labels}; "
            f"got {self.payloads}",
        )
        return result


class StatusServer(_Server):
    """Answers every request with ``status`` and ``body`` (``{auth}`` becomes the request's
    Authorization header, to prove a pager does not echo what a server reflects)."""

    def __init__(self, status: int, body: str = "") -> None:
        self.status = status
        self.body = body
        self.requests: list[Recorded] = []
        super().__init__(self._respond)

    def _respond(self, handler: BaseHTTPRequestHandler, request: Recorded) -> None:
        self.requests.append(request)
        body = self.body.replace("{auth}", request.headers.get("Authorization", ""))
        _answer(handler, self.status, body.encode())


class AlertmanagerServer:
    """A private Alertmanager child process sending every notification to ``webhook_url``."""

    def __init__(self, webhook_url: str, binary: Path | None = None) -> None:
        self.binary = binary or find_alertmanager()
        self.port = free_port()
        self._base = Path(tempfile.mkdtemp(prefix="spek-am-"))
        self._log_path = self._base / "alertmanager.log"
        self._config = self._base / "alertmanager.yml"
        config = {
            "route": {
                "receiver": "recorder",
                "group_by": ["..."],  # every alert is a group of its own
                "group_wait": GROUP_WAIT,
                "group_interval": GROUP_INTERVAL,
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "recorder",
                    "webhook_configs": [{"url": webhook_url, "send_resolved": True}],
                }
            ],
        }
        self._config.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        if self._closed:
            raise HarnessError("this AlertmanagerServer was closed; make a new one")
        self._log = self._log_path.open("ab")
        command = [
            str(self.binary),
            f"--config.file={self._config}",
            f"--storage.path={self._base / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # no gossip: a single private instance
            "--log.level=warn",
        ]
        try:
            self._proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
            )
            wait_until(
                self._ready,
                timeout=timeout,
                message=f"alertmanager on port {self.port} did not become ready",
                ignore=(httpx.HTTPError,),
            )
        except (OSError, WaitTimeoutError, HarnessError) as exc:
            self.stop()
            raise HarnessError(
                f"could not start `{' '.join(command)}`: {exc}\n"
                f"--- tail of {self._log_path} ---\n{log_tail(self._log_path)}"
            ) from exc

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        """Alertmanager's active alerts (``GET /api/v2/alerts``) holding all of ``labels``."""
        filters = [f'{key}="{value}"' for key, value in labels.items()]
        answer = httpx.get(f"{self.url}/api/v2/alerts", params={"filter": filters}, timeout=5)
        answer.raise_for_status()
        result: list[dict[str, Any]] = answer.json()
        return result

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            shutil.rmtree(self._base, ignore_errors=True)

    def _ready(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            raise HarnessError(f"alertmanager exited early on port {self.port}")
        return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200


@dataclass
class AlertmanagerStack:
    server: AlertmanagerServer
    receiver: WebhookReceiver

    @property
    def url(self) -> str:
        return self.server.url


def _start_stack() -> AlertmanagerStack:
    receiver = WebhookReceiver()
    try:
        server = AlertmanagerServer(f"{receiver.url}/alerts")
        try:
            server.start()
        except BaseException:
            server.close()
            raise
    except BaseException:
        receiver.close()
        raise
    return AlertmanagerStack(server, receiver)


@pytest.fixture(scope="session")
def alertmanager() -> Iterator[AlertmanagerStack]:
    """A ready Alertmanager whose notifications land in ``.receiver``; stopped at the end."""
    failure = ""
    try:
        stack = _start_stack()
    except HarnessError as exc:
        failure = str(exc)
    if failure:
        pytest.fail(failure, pytrace=False)
    try:
        yield stack
    finally:
        stack.server.close()
        stack.receiver.close()
