"""The ``websocket`` probe: open WebSockets to the app and report the share that fail.

Each run makes ``attempts`` attempts at once, each within the probe's timeout: TCP (and TLS)
connect, the opening handshake (101 and the right Sec-WebSocket-Accept), and with ``echo`` one
text message out and one message back that must equal ``echo_reply`` (``echo_payload`` when not
set); then a closing handshake, which is not judged.

* ``failure_ratio`` — failed attempts / judged attempts, volume = judged attempts;
* ``latency`` — the median time of the successful attempts (connect to handshake or echo done);
  an error sample when none succeeded.

An attempt fails when the app fails it: a refused connection, a timeout, or anything that goes
wrong once connected — an answer that is not a WebSocket handshake (any non-101 status, a wrong
accept key, garbage), a reset or closed connection, a wrong echo. An attempt whose connection
cannot be set up for another reason — a name that does not resolve, an unreachable network, a
failed TLS handshake — cannot be judged and is left out; when every attempt is left out, the run
raises ProbeError and both signals are UNKNOWN.
"""

from __future__ import annotations

import asyncio
import ssl
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

from spek_sentinel.config.probes import WebSocketProbe
from spek_sentinel.domain.errors import ProbeError
from spek_sentinel.probes import ws_client
from spek_sentinel.probes.base import Failed, Reading
from spek_sentinel.probes.transport import ca_context, env_headers, unverified_context
from spek_sentinel.probes.ws_client import ConnectError, Endpoint, WebSocketError

SHOWN = 80  # characters of a wrong echo quoted in a problem
CLOSE_WAIT = 1.0  # seconds at most for the closing handshake of a finished attempt


@dataclass(frozen=True, slots=True)
class Attempt:
    latency: float | None = None  # set when the attempt succeeded
    problem: str | None = None  # why it failed, or why it could not be judged
    judged: bool = True  # False: the probe could not tell (DNS, TLS), not counted


class WebSocketHealthProbe:
    """One ``[probes.NAME]`` of kind websocket."""

    def __init__(
        self,
        name: str,
        model: WebSocketProbe,
        interval: float,
        headers: Mapping[str, str],
        tls: ssl.SSLContext | None,
    ) -> None:
        self._name = name
        self._model = model
        self._interval = interval
        self._headers = dict(headers)
        self._tls = tls
        self._endpoint = Endpoint.parse(model.url)
        # attempts end (and count) before observe's own timeout cancels the whole run
        self._margin = min(1.0, model.timeout * 0.2)
        self._budget = model.timeout - self._margin
        self._expected = (model.echo_reply or model.echo_payload).encode()
        self._measures = {signal: spec.measure or "" for signal, spec in model.signals.items()}

    @property
    def name(self) -> str:
        return self._name

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def timeout(self) -> float:
        return self._model.timeout

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(self._measures)

    async def collect(self) -> Mapping[str, Reading | Failed | float | None]:
        close_by = asyncio.get_running_loop().time() + self._model.timeout - self._margin / 2
        attempts = await asyncio.gather(
            *(self._attempt(close_by) for _ in range(self._model.attempts))
        )
        judged = [a for a in attempts if a.judged]
        if not judged:
            raise ProbeError(f"{self._model.url}: cannot judge the app: {attempts[0].problem}")
        latencies = [a.latency for a in judged if a.latency is not None]
        failed = len(judged) - len(latencies)
        problems = sorted({a.problem for a in judged if a.problem is not None})
        values: dict[str, Reading | Failed | float | None] = {
            "failure_ratio": Reading(failed / len(judged), len(judged)),
            "latency": (
                Reading(statistics.median(latencies), len(latencies))
                if latencies
                else Failed(f"{self._model.url}: no attempt succeeded: {'; '.join(problems)}")
            ),
        }
        return {signal: values[measure] for signal, measure in self._measures.items()}

    async def aclose(self) -> None:
        return None  # every attempt closes its own connection

    async def _attempt(self, close_by: float) -> Attempt:
        started = time.perf_counter()
        connection: ws_client.Connection | None = None
        try:
            async with asyncio.timeout(self._budget):
                connection = await ws_client.connect(self._endpoint, self._headers, self._tls)
                if self._model.echo:
                    await connection.send_text(self._model.echo_payload)
                    reply = await connection.receive()
                    if reply != self._expected:
                        shown = reply[:SHOWN].decode(errors="replace")
                        raise WebSocketError(f"echo answered {shown!r}")
            return Attempt(latency=time.perf_counter() - started)
        except TimeoutError:
            return Attempt(problem=f"timed out after {self._budget:.3g}s")
        except WebSocketError as exc:
            return Attempt(problem=str(exc))
        except ConnectionRefusedError:
            return Attempt(problem="connection refused")
        except ConnectError as exc:  # DNS, routing, TLS: the probe's own setup is in doubt
            return Attempt(problem=str(exc), judged=False)
        except (OSError, asyncio.IncompleteReadError):  # once connected: reset, closed
            return Attempt(problem="connection closed or reset by the server")
        finally:
            if connection is not None:
                wait = min(CLOSE_WAIT, close_by - asyncio.get_running_loop().time())
                await connection.close(max(wait, 0.0))


def tls_context(model: WebSocketProbe) -> ssl.SSLContext | None:
    """For wss://: the system trust store, the configured CA file, or no verification."""
    if not model.url.lower().startswith("wss://"):
        return None
    if model.tls_insecure_skip_verify:
        return unverified_context()
    return ca_context(model.tls_ca_file)


def build(
    name: str, model: WebSocketProbe, interval: float, environ: Mapping[str, str]
) -> WebSocketHealthProbe:
    headers = env_headers(name, model.headers_env, environ)
    return WebSocketHealthProbe(name, model, interval, headers, tls_context(model))
