"""PostgreSQL's own tools inside the database's container, for the restore (``restore.py``) when
the database is reachable only there, as in the runbook (``docker exec spek-postgres psql ...``).

Both run through the Docker engine's exec API with the exec's stdin attached: the hijacked
connection that ``exec_start(socket=True)`` returns carries stdin one way and the multiplexed
stdout/stderr frames the other (8-byte header: stream, 3 zero bytes, big-endian length).

- ``PsqlSession``: one ``psql`` in the container, kept open for as long as the caller needs a
  session (the restore's advisory lock and session settings live as long as it does), fed one
  statement at a time on stdin. After each statement psql echoes a marker with its ``ERROR``,
  ``SQLSTATE`` and ``LAST_ERROR_MESSAGE`` variables, so every statement's outcome is known
  without parsing its stderr. A failed statement raises the ``psycopg`` exception class of its
  SQLSTATE (``ObjectInUse`` for 55006, ...), so callers handle it exactly as one raised on a
  psycopg connection; a session that ended or stopped answering raises
  ``psycopg.OperationalError`` and is unusable from then on. Rows come back as one JSON array
  (``json_agg`` of the query), so values keep their types (numbers, booleans, arrays, objects)
  without psql's text formatting in between.
- ``run_in_container``: one command with a file streamed into its stdin while its stdout and
  stderr are drained (``pg_restore`` reading the archive from the host); nothing is copied
  into the container's filesystem.

Every command runs under the container's ``timeout`` (coreutils or busybox) so it ends even if
this process stops talking to it, and every read here has its own limit a little later.
Closing the connection (or this process dying) is end of file on the command's stdin: psql
exits and its session ends, which releases whatever it held.

The password goes only in the exec's environment (``PGPASSWORD`` inside the container), never
on a command line; messages are redacted of it.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shlex
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import docker
import docker.errors
import psycopg
import psycopg.errors
import requests
from psycopg import sql
from psycopg.conninfo import make_conninfo

from spek_sentinel.secrets import redact

_HEADER = struct.Struct(">BxxxL")
_STDOUT, _STDERR = 1, 2
_CHUNK = 256 * 1024
_STDERR_KEEP = 8000  # characters of stderr kept for messages
_STDOUT_LIMIT = 64 * 1024 * 1024  # a pg_restore --list of a huge schema stays well below
_GRACE = 15.0  # past the container's own timeout: its kill, and the last bytes
_KILL_AFTER = 5  # seconds between timeout's TERM and its KILL
_CLOSE_WAIT = 5.0  # for psql to exit once its stdin is closed
_POLL = 0.05


@dataclass(frozen=True, slots=True)
class Container:
    """Where the tools run: the container, the engine, and how the server is logged in to."""

    name: str
    user: str
    password: str | None = field(repr=False)
    docker_host: str
    connect_timeout: float = 10.0

    def conninfo(self, dbname: str) -> str:
        """The connection string for a tool in the container: never the password."""
        return make_conninfo(
            "", dbname=dbname, user=self.user, connect_timeout=str(_whole(self.connect_timeout))
        )

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {"PGCONNECT_TIMEOUT": str(_whole(self.connect_timeout)), **(extra or {})}
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.password,) if self.password else ()


class ContainerError(Exception):
    """The engine or the container cannot run the command (not a failure of the command)."""


@dataclass(frozen=True, slots=True)
class ExecResult:
    command: str  # as the runbook would type it, for messages (no secret is ever on it)
    exit_code: int | None  # None: it did not finish
    failure: str | None  # None on exit 0
    stdout: bytes
    output: str  # stderr's tail, redacted


def run_in_container(
    where: Container,
    argv: Sequence[str],
    *,
    timeout: float,
    stdin: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ExecResult:
    """Run ``argv`` in the container under its ``timeout``, ``stdin`` (a file on this host)
    streamed into it, and wait for its exit code. Never raises for the command's own failure:
    the result says what went wrong; the engine or the container being unusable is a
    ``ContainerError``.

    The file is written from this thread while another drains the output: a command that
    writes much while reading (or exits early, as ``pg_restore --list`` does once it has the
    table of contents) must neither block nor be blocked. A command that exits before reading
    all of stdin is not an error by itself; its exit code says.
    """
    seconds = max(1, math.ceil(timeout))
    prefix = "docker exec -i" if stdin is not None else "docker exec"
    command = f"{prefix} {where.name} {shlex.join(argv)}"
    source = None
    if stdin is not None:
        try:
            source = stdin.open("rb")
        except OSError as exc:
            return ExecResult(command, None, f"cannot read {stdin}: {exc.strerror}", b"", "")
    try:
        with _engine(where, seconds) as client:
            container_id = _running(client, where)
            try:
                exec_id = client.api.exec_create(
                    container_id,
                    ["timeout", "-s", "TERM", "-k", str(_KILL_AFTER), str(seconds), *argv],
                    stdin=source is not None,
                    stdout=True,
                    stderr=True,
                    environment=where.env(env),
                )["Id"]
                raw = _attach(client, exec_id)
            except (docker.errors.DockerException, requests.RequestException) as exc:
                raise _engine_error(where, exc) from None
            out, err, finished = _pump(raw, source, limit=seconds + _GRACE)
            code = _exit_code(client, exec_id) if finished else None
    finally:
        if source is not None:
            source.close()
    stderr = redact(err.decode(errors="replace"), where.secrets).strip()
    tail = stderr[-_STDERR_KEEP:]
    if not finished:
        failure: str | None = (
            f"did not finish in {seconds + _GRACE:g}s and stopped answering (in container "
            f"{where.name})"
        )
    elif code == 0:
        failure = None
    elif code == 124:
        failure = f"did not finish in {seconds}s and was stopped inside container {where.name}"
    elif code in (126, 127):
        failure = (
            f"could not start in container {where.name} (exit {code}): it needs `timeout` and "
            f"`{argv[0]}` on its PATH"
        )
    elif code is None:
        failure = "finished, but the engine did not report an exit code"
    else:
        failure = f"exited with {code}"
    return ExecResult(command, code, failure, bytes(out), tail)


class PsqlSession:
    """A psql session in the container (see the module's docstring). Not thread-safe.

    ``lifetime`` bounds the psql process inside the container (its ``timeout``);
    ``reply_timeout`` how long one statement may take to answer here before the session is
    given up (closed) with an ``OperationalError``. Use ``open_psql`` to get one.
    """

    def __init__(
        self,
        where: Container,
        dbname: str,
        *,
        lifetime: float,
        reply_timeout: float,
        application_name: str,
    ) -> None:
        self.where = where
        self.dbname = dbname
        self.reply_timeout = reply_timeout
        self._nonce = uuid.uuid4().hex
        self._marker = re.compile(
            rf"{self._nonce} (true|false) ([0-9A-Z]*) (E?'(?:[^']|'')*') {self._nonce}\.\n"
        )
        self._out = bytearray()
        self._err = bytearray()
        self._closed = False
        self._eof = False
        seconds = max(1, math.ceil(lifetime))
        self._client = _connect(where, reply_timeout)
        try:
            container_id = _running(self._client, where)
            argv = [
                "timeout", "-s", "TERM", "-k", str(_KILL_AFTER), str(seconds),
                "psql", "-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=0",
                f"--dbname={where.conninfo(dbname)}",
            ]  # fmt: skip
            env = where.env({"PGAPPNAME": application_name, "PGCLIENTENCODING": "UTF8"})
            self._exec_id = self._client.api.exec_create(
                container_id, argv, stdin=True, stdout=True, stderr=True, environment=env
            )["Id"]
            self._raw = _attach(self._client, self._exec_id)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            self._client.close()
            raise _as_operational(_engine_error(where, exc)) from None
        except ContainerError as exc:
            self._client.close()
            raise _as_operational(exc) from None
        self.pid = int(self.rows(sql.SQL("SELECT pg_backend_pid()"))[0][0])

    @property
    def usable(self) -> bool:
        return not self._closed

    def run(self, statement: sql.SQL | sql.Composed) -> None:
        """Run one statement; its rows, if any, are discarded."""
        self._execute(statement.as_string())

    def rows(self, query: sql.SQL | sql.Composed) -> list[tuple[Any, ...]]:
        """The rows of one query (a SELECT), each a tuple of JSON-typed values."""
        inner = query.as_string()  # composed: its values are quoted literals already
        wrapped = f"SELECT coalesce(json_agg(q), '[]'::json) FROM ({inner}) q"  # noqa: S608
        text = self._execute(wrapped).strip()
        try:
            found = json.loads(text, object_pairs_hook=_Pairs)
        except ValueError:
            raise psycopg.InterfaceError(
                f"unexpected answer from psql in container {self.where.name}: {text[:200]!r}"
            ) from None
        return [tuple(_plain(value) for _, value in row) for row in found]

    def close(self) -> None:
        """End of file on psql's stdin: it exits and its session ends. Waits a moment for that
        to happen, so whatever the session held is released when this returns."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._raw.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _CLOSE_WAIT
            while time.monotonic() < deadline:  # psql's last words are of no interest
                try:
                    if _read_frame(self._raw, deadline) is None:
                        break
                except TimeoutError:
                    break
        with contextlib.suppress(OSError):
            self._raw.close()
        self._client.close()

    def _execute(self, text: str) -> str:
        if self._closed:
            raise psycopg.OperationalError(
                f"the psql session in container {self.where.name} is closed"
            )
        statement = text.strip().rstrip(";")
        echo = f"\\echo {self._nonce} :ERROR :SQLSTATE :'LAST_ERROR_MESSAGE' {self._nonce}.\n"
        del self._out[:]
        try:
            self._raw.settimeout(self.reply_timeout)
            self._raw.sendall(f"{statement};\n{echo}".encode())
        except OSError as exc:
            self._give_up(f"writing to it failed ({exc.strerror or type(exc).__name__})")
        deadline = time.monotonic() + self.reply_timeout
        found = None
        while found is None:
            found = self._marker.search(self._out.decode(errors="replace"))
            if found is not None:
                break
            if self._eof:
                self._give_up(self._ended())
            if time.monotonic() >= deadline:
                self._give_up(f"no answer within {self.reply_timeout:g}s")
            try:
                self._receive(deadline)
            except OSError as exc:
                self._give_up(f"reading from it failed ({exc.strerror or type(exc).__name__})")
        text_out = self._out.decode(errors="replace")
        before = text_out[: found.start()]
        del self._out[:]
        failed, sqlstate, message = found[1] == "true", found[2], _unquote(found[3])
        if failed:
            raise _sql_error(sqlstate, redact(message, self.where.secrets))
        return before

    def _receive(self, deadline: float) -> None:
        """One frame (or end of file) into the buffers; nothing when the deadline passes."""
        try:
            frame = _read_frame(self._raw, deadline)
        except TimeoutError:
            return
        if frame is None:
            self._eof = True
            return
        kind, body = frame
        if kind == _STDERR:
            self._err.extend(body)
            del self._err[: -_STDERR_KEEP * 2]
        else:
            self._out.extend(body)
            if len(self._out) > _STDOUT_LIMIT:
                self._give_up("its answer is too large")

    def _ended(self) -> str:
        code = _exit_code(self._client, self._exec_id)
        stderr = " ".join(redact(self._err.decode(errors="replace"), self.where.secrets).split())
        if code in (126, 127):
            return f"it could not start (exit {code}): the container needs `timeout` and `psql`"
        if code == 124:
            return "it ran out of its time in the container and was stopped"
        status = f"exit code {code}" if code is not None else "exit code unknown"
        return f"{status}: {stderr[-600:]}" if stderr else status

    def _give_up(self, reason: str) -> NoReturn:
        self._closed = True
        with contextlib.suppress(OSError):
            self._raw.close()
        self._client.close()
        raise psycopg.OperationalError(
            f"psql on {self.dbname} in container {self.where.name} ended: {reason}"
        )


@contextlib.contextmanager
def open_psql(
    where: Container,
    dbname: str,
    *,
    lifetime: float,
    reply_timeout: float,
    application_name: str,
) -> Iterator[PsqlSession]:
    session = PsqlSession(
        where,
        dbname,
        lifetime=lifetime,
        reply_timeout=reply_timeout,
        application_name=application_name,
    )
    try:
        yield session
    finally:
        session.close()


# --- the engine ---


def _connect(where: Container, timeout: float) -> Any:
    try:
        return docker.DockerClient(base_url=where.docker_host, version="auto", timeout=timeout + 30)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise _as_operational(_engine_error(where, exc)) from None


@contextlib.contextmanager
def _engine(where: Container, seconds: int) -> Iterator[Any]:
    try:
        client = docker.DockerClient(base_url=where.docker_host, version="auto", timeout=seconds)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise _engine_error(where, exc) from None
    try:
        yield client
    finally:
        client.close()


def _running(client: Any, where: Container) -> str:
    try:
        container = client.containers.get(where.name)
    except docker.errors.NotFound:
        raise ContainerError(f"container {where.name!r} does not exist") from None
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise _engine_error(where, exc) from None
    if container.status != "running":
        raise ContainerError(f"container {where.name!r} is {container.status}, not running")
    return str(container.id)


def _attach(client: Any, exec_id: str) -> socket.socket:
    """The exec's hijacked connection as a plain blocking socket (docker-py hands back the
    ``SocketIO`` around it for a unix socket, the socket itself for TLS)."""
    handle = client.api.exec_start(exec_id, socket=True)
    raw: socket.socket = getattr(handle, "_sock", handle)
    raw.settimeout(None)  # the client's request timeout must not end a long, quiet command
    return raw


def _engine_error(where: Container, exc: Exception) -> ContainerError:
    text = " ".join(redact(str(exc), where.secrets).split())[:600]
    return ContainerError(f"the docker engine at {where.docker_host} failed: {text}")


def _as_operational(exc: ContainerError) -> psycopg.OperationalError:
    return psycopg.OperationalError(str(exc))


def _exit_code(client: Any, exec_id: str) -> int | None:
    """The exec's exit code; the engine may mark it finished a moment after the stream ends."""
    pause = threading.Event()
    for _ in range(100):
        try:
            info = client.api.exec_inspect(exec_id)
        except (docker.errors.DockerException, requests.RequestException):
            return None
        if not info.get("Running"):
            code = info.get("ExitCode")
            return int(code) if code is not None else None
        pause.wait(_POLL)
    return None


# --- the stream ---


def _read_exact(raw: socket.socket, count: int, deadline: float | None) -> bytes | None:
    data = bytearray()
    while len(data) < count:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                if data:  # a frame cut in half cannot be resumed: the stream is unusable
                    raise OSError("a frame of the exec's output was cut short")
                raise TimeoutError
            raw.settimeout(left)
        try:
            chunk = raw.recv(count - len(data))
        except TimeoutError:
            if data:
                raise OSError("a frame of the exec's output was cut short") from None
            raise
        if not chunk:
            return None
        data.extend(chunk)
    return bytes(data)


def _read_frame(raw: socket.socket, deadline: float | None) -> tuple[int, bytes] | None:
    """One (stream, payload) frame; None at end of file. TimeoutError: nothing came."""
    header = _read_exact(raw, _HEADER.size, deadline)
    if header is None:
        return None
    kind, size = _HEADER.unpack(header)
    body = _read_exact(raw, size, None if deadline is None else max(deadline, time.monotonic() + 5))
    if body is None:
        return None
    return kind, body


def _pump(raw: socket.socket, source: Any, *, limit: float) -> tuple[bytearray, bytearray, bool]:
    """Write ``source`` (a binary file, or None) into the exec and read its output until the
    end, at most ``limit`` seconds: then a watchdog closes the connection, which ends both the
    blocked write and the read. Returns stdout, stderr and whether it finished in time."""
    out, err = bytearray(), bytearray()
    expired = threading.Event()
    done = threading.Event()

    def cancel() -> None:
        expired.set()
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_RDWR)

    def read() -> None:
        try:
            while True:
                frame = _read_frame(raw, None)
                if frame is None:
                    return
                kind, body = frame
                if kind == _STDERR:
                    err.extend(body)
                    del err[: -_STDERR_KEEP * 2]
                elif len(out) < _STDOUT_LIMIT:
                    out.extend(body)
        except OSError:
            return
        finally:
            done.set()

    watchdog = threading.Timer(limit, cancel)
    watchdog.daemon = True
    reader = threading.Thread(target=read, name="exec-output", daemon=True)
    watchdog.start()
    reader.start()
    try:
        if source is not None:
            _feed(raw, source, done.is_set)
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_WR)  # end of file on the command's stdin
        reader.join(limit + 1)
    finally:
        watchdog.cancel()
        with contextlib.suppress(OSError):
            raw.close()
    return out, err, done.is_set() and not expired.is_set()


def _feed(raw: socket.socket, source: Any, finished: Callable[[], bool]) -> None:
    """Copy the file into the socket until it ends or the command stops reading."""
    while not finished():
        block = source.read(_CHUNK)
        if not block:
            return
        try:
            raw.sendall(block)
        except OSError:  # the command exited (or was stopped): its exit code says which
            return


# --- psql's answers ---


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs, in order and with repeated keys kept: the
    columns of a row (two columns may share a name)."""


def _plain(value: Any) -> Any:
    if isinstance(value, _Pairs):
        return {key: _plain(item) for key, item in value}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _unquote(literal: str) -> str:
    """psql's ``:'name'``: a SQL literal, ``E'...'`` (backslashes doubled) when it has one."""
    escaped = literal.startswith("E")
    body = literal[2:-1] if escaped else literal[1:-1]
    body = body.replace("''", "'")
    return body.replace("\\\\", "\\") if escaped else body


def _sql_error(sqlstate: str, message: str) -> psycopg.Error:
    try:
        kind: type[psycopg.Error] = psycopg.errors.lookup(sqlstate)
    except KeyError:
        kind = psycopg.DatabaseError
    return kind(message or f"SQLSTATE {sqlstate}")


def _whole(seconds: float) -> int:
    return max(2, math.ceil(seconds))  # libpq's floor for connect_timeout is 2 s
