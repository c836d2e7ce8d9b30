"""A real HTTP server and a real WebSocket server on 127.0.0.1 whose behaviour tests switch.

HTTP is the standard library's threading server; WebSocket is the `websockets` library (a
test-only dependency), so the probe's own RFC 6455 client is checked against an independent
implementation. Both run in background threads of the test process.

``http_mode``: healthy (200, {"status": "ok"}), degraded (200, {"status": "degraded"}),
error (500), slow (healthy after ``delay`` seconds), garbage (bytes that are not HTTP),
hang (reads the request, never answers).

``ws_mode``: echo, wrong_echo, reject (403), reject_odd (403 for every other handshake),
bad_accept (101 with a wrong Sec-WebSocket-Accept), hang (never answers the handshake).

With a ``Certificate`` (made by `openssl`), both servers speak TLS: https:// and wss://.
``stop_http()`` / ``stop_ws()`` leave the port refusing connections; ``start_*`` brings the
server back on the same port.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import pytest

from harness import HarnessError
from harness.ports import free_port

if TYPE_CHECKING:
    from websockets.sync.server import Server, ServerConnection

_INSTALL_HINT = "install the test extra: .venv/bin/pip install -e '.[test]' (needs `websockets`)"
HTTP_MODES = ("healthy", "degraded", "error", "slow", "garbage", "hang")
WS_MODES = ("echo", "wrong_echo", "reject", "reject_odd", "bad_accept", "hang")
GARBAGE = b"\x16\x03\x01 this is not HTTP at all\r\n\r\n"


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1: serve with cert+key, trust it as a CA file."""

    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path) -> Certificate:
        cert, key = directory / "cert.pem", directory / "key.pem"
        command = [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert),
        ]  # fmt: skip
        try:
            subprocess.run(command, capture_output=True, check=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            raise HarnessError(
                f"cannot make a test certificate with `openssl` ({exc}) {detail.decode()[:300]}; "
                "install the Debian package `openssl`"
            ) from exc
        return cls(cert, key)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handlers: nothing outlives the test
    allow_reuse_address = True

    def __init__(self, port: int, app: WebApp, tls: ssl.SSLContext | None) -> None:
        self.app = app
        super().__init__(("127.0.0.1", port), _Handler)
        if tls is not None:
            # the TLS handshake happens in the handler's thread, not in the accepting loop
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout, refused certificate) is what tests provoke


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    timeout = 5  # a client that connects and sends nothing cannot hold a thread for long

    def do_GET(self) -> None:
        self.server.app.answer_http(self, with_body=True)

    def do_HEAD(self) -> None:
        self.server.app.answer_http(self, with_body=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class WebApp:
    def __init__(self, certificate: Certificate | None = None) -> None:
        self._tls = certificate.server_context() if certificate is not None else None
        self.http_port = free_port()
        self.ws_port = free_port()
        self.http_mode = "healthy"
        self.ws_mode = "echo"
        self.delay = 5.0  # seconds the slow mode waits before answering
        self.http_requests = 0
        self.ws_handshakes = 0
        self.last_http_headers: dict[str, str] = {}
        self.last_ws_headers: dict[str, str] = {}
        self._lock = threading.Lock()
        self._http_release = threading.Event()
        self._ws_release = threading.Event()
        self._http: _HttpServer | None = None
        self._ws: Server | None = None
        self._threads: list[threading.Thread] = []

    @property
    def http_url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}/health"

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self._tls else "ws"
        return f"{scheme}://127.0.0.1:{self.ws_port}/live"

    # -- lifecycle --------------------------------------------------------------------------

    def start_http(self) -> None:
        if self._http is None:
            self._http_release = threading.Event()
            try:
                self._http = _HttpServer(self.http_port, self, self._tls)
            except OSError as exc:
                raise HarnessError(f"cannot listen on 127.0.0.1:{self.http_port}: {exc}") from exc
            self._spawn(self._http.serve_forever, 0.05)

    def stop_http(self) -> None:
        if self._http is not None:
            self._http_release.set()
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def start_ws(self) -> None:
        if self._ws is not None:
            return
        try:
            from websockets.sync.server import serve  # noqa: PLC0415 (fail with a hint, not at import)
        except ImportError as exc:
            raise HarnessError(f"the `websockets` package is missing; {_INSTALL_HINT}") from exc
        self._ws_release = threading.Event()
        try:
            self._ws = serve(
                self._ws_handler,
                "127.0.0.1",
                self.ws_port,
                process_request=self._ws_process_request,
                process_response=self._ws_process_response,
                ssl=self._tls,
            )
        except OSError as exc:
            raise HarnessError(f"cannot listen on 127.0.0.1:{self.ws_port}: {exc}") from exc
        self._spawn(self._ws.serve_forever)

    def stop_ws(self) -> None:
        if self._ws is not None:
            self._ws_release.set()
            self._ws.shutdown()
            self._ws = None

    def close(self) -> None:
        try:
            self.stop_http()
        finally:
            self.stop_ws()
            for thread in self._threads:
                thread.join(timeout=10)

    def __enter__(self) -> Self:
        try:
            self.start_http()
            self.start_ws()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- HTTP -------------------------------------------------------------------------------

    def answer_http(self, handler: BaseHTTPRequestHandler, with_body: bool) -> None:
        with self._lock:
            self.http_requests += 1
            self.last_http_headers = dict(handler.headers.items())
        mode = self.http_mode
        try:
            if mode == "hang":
                self._http_release.wait()
                return
            if mode == "slow" and self._http_release.wait(self.delay):
                return  # released by stop/close before the delay was over
            if mode == "garbage":
                handler.wfile.write(GARBAGE)
            elif mode == "error":
                self._send(handler, HTTPStatus.INTERNAL_SERVER_ERROR, b"boom\n", with_body)
            else:
                status = "degraded" if mode == "degraded" else "ok"
                body = json.dumps({"status": status, "checks": [{"db": "up"}]}).encode()
                self._send(handler, HTTPStatus.OK, body, with_body, "application/json")
        except OSError:
            pass  # the probe gave up and closed the connection: expected in timeout tests

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: HTTPStatus,
        body: bytes,
        with_body: bool,
        content_type: str = "text/plain",
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if with_body:
            handler.wfile.write(body)

    # -- WebSocket --------------------------------------------------------------------------

    def _ws_process_request(self, connection: ServerConnection, request: Any) -> Any:
        with self._lock:
            self.ws_handshakes += 1
            self.last_ws_headers = dict(request.headers.raw_items())
            odd = self.ws_handshakes % 2 == 1
        if self.ws_mode == "reject" or (self.ws_mode == "reject_odd" and odd):
            return connection.respond(HTTPStatus.FORBIDDEN, "forbidden\n")
        if self.ws_mode == "hang":
            self._ws_release.wait()
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n")
        return None

    def _ws_process_response(
        self, connection: ServerConnection, request: Any, response: Any
    ) -> Any:
        if self.ws_mode == "bad_accept" and response.status_code == HTTPStatus.SWITCHING_PROTOCOLS:
            del response.headers["Sec-WebSocket-Accept"]
            response.headers["Sec-WebSocket-Accept"] = "bm90IHRoZSByaWdodCBrZXk="
        return response

    def _ws_handler(self, connection: ServerConnection) -> None:
        from websockets.exceptions import ConnectionClosed  # noqa: PLC0415 (see start_ws)

        try:
            for message in connection:
                text = message if isinstance(message, str) else message.decode()
                connection.send(f"not {text}" if self.ws_mode == "wrong_echo" else text)
        except ConnectionClosed:
            pass  # a probe that timed out drops the connection without a close frame


def _started(app: WebApp) -> WebApp:
    failure = None
    try:
        app.__enter__()
    except HarnessError as exc:
        failure = str(exc)
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    return app


@pytest.fixture
def web_app() -> Iterator[WebApp]:
    """A started WebApp (HTTP healthy, WebSocket echo), closed after the test."""
    app = _started(WebApp())
    try:
        yield app
    finally:
        app.close()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, made once per run."""
    try:
        return Certificate.make(tmp_path_factory.mktemp("tls"))
    except HarnessError as exc:
        failure = str(exc)
    pytest.fail(failure, pytrace=False)


@pytest.fixture
def tls_web_app(certificate: Certificate) -> Iterator[WebApp]:
    """The same app over https:// and wss://, serving ``certificate``."""
    app = _started(WebApp(certificate))
    try:
        yield app
    finally:
        app.close()
