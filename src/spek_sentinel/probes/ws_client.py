"""A minimal RFC 6455 WebSocket client over asyncio streams: what the websocket probe needs.

The opening handshake (HTTP/1.1 Upgrade with a random key; 101 and the matching
Sec-WebSocket-Accept required), masked frames out, one message in (pings answered, fragments
joined), and the closing handshake. No extensions or subprotocols are offered, so a server that
answers with either is not speaking to this client. Timeouts are the caller's (asyncio.timeout).

Every way the server can misbehave raises WebSocketError. Setting up the connection raises
ConnectionRefusedError as it is and ConnectError for any other failure (DNS, routing, TLS);
once connected, socket errors (a reset) propagate as they are.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

ACCEPT_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
HEAD_LIMIT = 16 * 1024  # bytes of handshake answer read before giving up on it
MESSAGE_LIMIT = 1 << 20

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
NORMAL_CLOSURE = 1000


class WebSocketError(Exception):
    """The server answered, but not as a WebSocket endpoint should."""


class ConnectError(Exception):
    """The connection could not be set up, and not because the server refused or was slow:
    name resolution, routing or the TLS handshake failed."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    resource: str  # path and query, as sent in the request line
    host_header: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        tls = parts.scheme.lower() == "wss"
        if parts.scheme.lower() not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"url {url!r}: expected ws://host:port/path or wss://...")
        port = parts.port or (443 if tls else 80)  # ValueError for a bad port
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, port, resource, parts.netloc.rsplit("@", 1)[-1], tls)


def accept_for(key: str) -> str:
    """The Sec-WebSocket-Accept a server must answer to ``key``."""
    digest = hashlib.sha1((key + ACCEPT_GUID).encode("ascii"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def encode_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final frame; clients mask every frame (RFC 6455 section 5.3)."""
    mask = os.urandom(4) if mask is None else mask
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


@dataclass(frozen=True, slots=True)
class Frame:
    fin: bool
    opcode: int
    payload: bytes


async def read_frame(reader: asyncio.StreamReader, limit: int = MESSAGE_LIMIT) -> Frame:
    first, second = await reader.readexactly(2)
    fin, opcode = bool(first & 0x80), first & 0x0F
    if first & 0x70:
        raise WebSocketError("frame with reserved bits set (no extension was negotiated)")
    if second & 0x80:
        raise WebSocketError("server sent a masked frame")
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    if opcode >= CLOSE and (length > 125 or not fin):
        raise WebSocketError(f"malformed control frame (opcode {opcode:#x})")
    if length > limit:
        raise WebSocketError(f"frame of {length} bytes is over the {limit} byte limit")
    return Frame(fin, opcode, await reader.readexactly(length))


class Connection:
    """An open WebSocket: send a text message, receive one message, close."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def send_text(self, text: str) -> None:
        self._writer.write(encode_frame(TEXT, text.encode()))
        await self._writer.drain()

    async def receive(self) -> bytes:
        """The payload of the next text or binary message."""
        parts: list[bytes] = []
        size = 0
        while True:
            frame = await read_frame(self._reader)
            if frame.opcode == PING:
                self._writer.write(encode_frame(PONG, frame.payload))
                await self._writer.drain()
                continue
            if frame.opcode == PONG:
                continue
            if frame.opcode == CLOSE:
                code = (
                    struct.unpack("!H", frame.payload[:2])[0] if len(frame.payload) >= 2 else None
                )
                raise WebSocketError(f"server closed the connection (code {code})")
            if frame.opcode not in (TEXT, BINARY, CONTINUATION):
                raise WebSocketError(f"unknown opcode {frame.opcode:#x}")
            if (frame.opcode == CONTINUATION) != bool(parts):
                raise WebSocketError("fragments out of order")
            parts.append(frame.payload)
            size += len(frame.payload)
            if size > MESSAGE_LIMIT:
                raise WebSocketError(f"message over the {MESSAGE_LIMIT} byte limit")
            if frame.fin:
                return b"".join(parts)

    async def close(self, wait: float) -> None:
        """Closing handshake within ``wait`` seconds, then drop the connection. Never raises."""
        try:
            async with asyncio.timeout(wait):
                self._writer.write(encode_frame(CLOSE, struct.pack("!H", NORMAL_CLOSURE)))
                await self._writer.drain()
                while (await read_frame(self._reader)).opcode != CLOSE:
                    pass
        except (OSError, TimeoutError, asyncio.IncompleteReadError, WebSocketError):
            pass  # the check is over; a sloppy close is not a failure of it
        finally:
            self._writer.transport.abort()


async def connect(
    endpoint: Endpoint,
    headers: Mapping[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> Connection:
    """Open the TCP (and TLS) connection and complete the opening handshake."""
    try:
        reader, writer = await asyncio.open_connection(
            endpoint.host,
            endpoint.port,
            ssl=(tls or ssl.create_default_context()) if endpoint.tls else None,
            limit=HEAD_LIMIT,
        )
    except (ConnectionRefusedError, TimeoutError):
        raise
    except OSError as exc:
        raise ConnectError(
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        ) from exc
    try:
        await _handshake(endpoint, reader, writer, headers or {})
    except BaseException:
        writer.transport.abort()
        raise
    return Connection(reader, writer)


async def _handshake(
    endpoint: Endpoint,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    headers: Mapping[str, str],
) -> None:
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    lines = [
        f"GET {endpoint.resource} HTTP/1.1",
        f"Host: {endpoint.host_header}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "User-Agent: spek-sentinel",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise WebSocketError("connection closed before the handshake was answered") from exc
    except asyncio.LimitOverrunError as exc:
        raise WebSocketError(f"handshake answer over {HEAD_LIMIT} bytes") from exc
    status, answer = _parse_head(head)
    if status != 101:
        raise WebSocketError(f"handshake answered HTTP {status}, expected 101")
    if answer.get("upgrade", "").lower() != "websocket":
        raise WebSocketError("handshake answer lacks 'Upgrade: websocket'")
    if "upgrade" not in {t.strip().lower() for t in answer.get("connection", "").split(",")}:
        raise WebSocketError("handshake answer lacks 'Connection: Upgrade'")
    if answer.get("sec-websocket-accept") != accept_for(key):
        raise WebSocketError("handshake answer has a wrong Sec-WebSocket-Accept")
    if answer.get("sec-websocket-extensions"):
        raise WebSocketError("server chose an extension that was not offered")


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise WebSocketError(f"not an HTTP answer: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(code), headers
