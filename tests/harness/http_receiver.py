"""An HTTP server on 127.0.0.1 that records every request and answers a status the test sets:
a stand-in for a webhook receiver, Slack or PagerDuty. For a server that never answers, use
``harness.tcp_stub.TcpStub()``; for a refused connection, a ``harness.ports.free_port()``."""

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    """Answers every request with ``status`` and ``reply`` (mutable between requests)."""

    def __init__(self, status: int = 200, reply: bytes = b"ok") -> None:
        self.status = status
        self.reply = reply
        self.content_type = "text/plain"
        self.received: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length) if length else b""
                headers = {name.lower(): value for name, value in self.headers.items()}
                receiver.received.append(Received(self.command, self.path, headers, body))
                self.send_response(receiver.status)
                self.send_header("Content-Type", receiver.content_type)
                self.send_header("Content-Length", str(len(receiver.reply)))
                self.end_headers()
                self.wfile.write(receiver.reply)

            do_POST = do_GET = do_PUT = _handle  # noqa: N815 - http.server's naming

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, status: int, reply: bytes, content_type: str = "text/plain") -> None:
        self.status, self.reply, self.content_type = status, reply, content_type

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
