"""The ``/ws`` endpoint: an echo over the `websockets` library's sans-I/O protocol, driven by
the connection the HTTP server read the upgrade request from."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from websockets.frames import Frame, Opcode
from websockets.http11 import Request as HandshakeRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

from spek_app.http import Request

log = logging.getLogger("spek_app.websocket")
# The library logs every connection's opening and closing at INFO: too chatty for an app log.
_protocol_log = logging.getLogger("spek_app.websocket.protocol")
_protocol_log.setLevel(logging.WARNING)

MAX_MESSAGE_BYTES = 1024 * 1024
IDLE_TIMEOUT = 300.0
CLOSE_TIMEOUT = 10.0


async def echo(
    request: Request,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    fail_handshake: bool = False,
    on_message: Callable[[], object] | None = None,
) -> bool:
    """Run one WebSocket connection to its end, echoing every message. False when the handshake
    failed (a malformed upgrade, or ``fail_handshake``: the errors fault answers 500)."""
    protocol = ServerProtocol(max_size=MAX_MESSAGE_BYTES, logger=_protocol_log)
    if fail_handshake:
        response = protocol.reject(500, "internal error\n")
    else:
        # The HTTP server has read the upgrade request already: hand the protocol the same bytes.
        protocol.receive_data(request.head)
        handshake = next(
            (e for e in protocol.events_received() if isinstance(e, HandshakeRequest)), None
        )
        if handshake is None:
            response = protocol.reject(400, "malformed WebSocket handshake\n")
        else:
            response = protocol.accept(handshake)
    protocol.send_response(response)
    if await _flush(protocol, writer) or response.status_code != 101:
        return False
    parts: list[bytes] = []
    opcode = Opcode.TEXT
    while protocol.state is not State.CLOSED:
        timeout = CLOSE_TIMEOUT if protocol.close_expected() else IDLE_TIMEOUT
        try:
            data = await asyncio.wait_for(reader.read(65536), timeout)
        except (TimeoutError, ConnectionError):
            break
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        for event in protocol.events_received():
            if not isinstance(event, Frame):
                continue
            if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                opcode, parts = event.opcode, [bytes(event.data)]
            elif event.opcode is Opcode.CONT:
                parts.append(bytes(event.data))
            else:
                continue  # ping, pong and close are answered by the protocol itself
            if event.fin:
                message = b"".join(parts)
                parts = []
                if on_message is not None:
                    on_message()
                if opcode is Opcode.TEXT:
                    protocol.send_text(message)
                else:
                    protocol.send_binary(message)
        if await _flush(protocol, writer) or not data:
            break
    return True


async def _flush(protocol: ServerProtocol, writer: asyncio.StreamWriter) -> bool:
    """Write what the protocol has to send; True once it asks for the connection to end."""
    ended = False
    for chunk in protocol.data_to_send():
        if chunk:
            writer.write(chunk)
        else:
            ended = True
    try:
        await writer.drain()
        if ended and writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        return True
    return ended
