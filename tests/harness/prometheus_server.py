"""A real Prometheus scraping a tiny exporter the tests control, plus small fake endpoints.

``prometheus`` (session fixture) starts /usr/bin/prometheus with a temp config and TSDB on a
free 127.0.0.1 port, scraping every second an exporter (prometheus_client) on another free
port; tests register their own gauges and counters on it and wait for the next scrape.
The fakes stand in for what a real Prometheus cannot be made to do on demand: a server that
never answers, one that answers garbage, one that records the Authorization header, TLS.
"""

import json
import shutil
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Self
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from harness import HarnessError, log_tail
from harness.ports import free_port
from harness.tcp_stub import TcpStub
from harness.wait import WaitTimeoutError, wait_until

_INSTALL_HINT = "install the Debian package `prometheus` (apt-get install prometheus)"
SCRAPE_INTERVAL = 1.0


def find_prometheus() -> Path:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").is_file() else None
    )
    if found is None:
        raise HarnessError(f"`prometheus` not found on PATH or in /usr/bin; {_INSTALL_HINT}")
    return Path(found)


class Exporter:
    """A /metrics endpoint on 127.0.0.1 with its own registry; metrics are created on demand."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.port = free_port()
        self._server, self._thread = start_http_server(
            self.port, addr="127.0.0.1", registry=self.registry
        )

    def gauge(self, name: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, f"test gauge {name}", labels, registry=self.registry)

    def counter(self, name: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, f"test counter {name}", labels, registry=self.registry)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class PrometheusServer:
    """A private Prometheus child process scraping ``targets`` every SCRAPE_INTERVAL."""

    def __init__(self, targets: list[str], binary: Path | None = None) -> None:
        self.binary = binary or find_prometheus()
        self.port = free_port()
        self._base = Path(tempfile.mkdtemp(prefix="spek-prom-"))
        self._log_path = self._base / "prometheus.log"
        self._config = self._base / "prometheus.yml"
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_INTERVAL:g}s",
                "evaluation_interval": f"{SCRAPE_INTERVAL:g}s",
            },
            "scrape_configs": [{"job_name": "exporter", "static_configs": [{"targets": targets}]}],
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
            raise HarnessError("this PrometheusServer was closed; make a new one")
        self._log = self._log_path.open("ab")
        command = [
            str(self.binary),
            f"--config.file={self._config}",
            f"--storage.tsdb.path={self._base / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        try:
            self._proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
            )
            wait_until(
                self._target_up,
                timeout=timeout,
                message=f"prometheus on port {self.port} did not scrape its target",
                ignore=(httpx.HTTPError,),
            )
        except (OSError, WaitTimeoutError, HarnessError) as exc:
            self.stop()
            raise HarnessError(
                f"could not start `{' '.join(command)}`: {exc}\n"
                f"--- tail of {self._log_path} ---\n{log_tail(self._log_path)}"
            ) from exc

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now (for waiting on scrapes)."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        answer.raise_for_status()
        result: list[dict[str, Any]] = answer.json()["data"]["result"]
        return result

    def wait_for(self, expr: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait until ``expr`` returns at least one series (such as ``metric == 3``)."""
        return wait_until(
            lambda: self.query(expr),
            timeout=timeout,
            message=f"prometheus never returned a series for {expr!r}",
            ignore=(httpx.HTTPError,),
        )

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

    def _target_up(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            raise HarnessError(f"prometheus exited early on port {self.port}")
        return any(s["value"][1] == "1" for s in self.query('up{job="exporter"}'))


@dataclass
class PrometheusStack:
    server: PrometheusServer
    exporter: Exporter

    @property
    def url(self) -> str:
        return self.server.url


def _start_stack() -> PrometheusStack:
    exporter = Exporter()
    try:
        server = PrometheusServer([f"127.0.0.1:{exporter.port}"])
        try:
            server.start()  # ~5s: Prometheus hands new targets to its scraper every 5s
        except BaseException:
            server.close()
            raise
    except BaseException:
        exporter.close()
        raise
    return PrometheusStack(server, exporter)


@pytest.fixture(scope="session")
def prometheus() -> Iterator[PrometheusStack]:
    """A running Prometheus that has scraped the exporter at least once; stopped at the end."""
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
        stack.exporter.close()


# ---------------------------------------------------------------------------------------------
# Fakes for what a real Prometheus cannot be made to do on demand
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    path: str
    params: dict[str, list[str]]
    headers: dict[str, str]


Answer = tuple[int, str, bytes]  # status, content type, body
Responder = Callable[[Request], Answer]


def prometheus_vector(value: str) -> Answer:
    """A Prometheus API success answer: one series with ``value``."""
    body = {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, value]}]},
    }
    return 200, "application/json", json.dumps(body).encode()


@dataclass
class StubHttpServer:
    """An HTTP server on 127.0.0.1 answering every GET with ``respond``; records requests."""

    respond: Responder
    tls: ssl.SSLContext | None = None
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                request = Request(parts.path, parse_qs(parts.query), dict(self.headers.items()))
                stub.requests.append(request)
                status, content_type, body = stub.respond(request)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SilentServer(TcpStub):
    """Accepts TCP connections and reads the request, but never answers."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise HarnessError("`openssl` not found; install the Debian package `openssl`")
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, check=False, timeout=30)
    if done.returncode != 0:
        raise HarnessError(f"openssl could not make a test certificate: {done.stderr.decode()}")
    return cert, key


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context
