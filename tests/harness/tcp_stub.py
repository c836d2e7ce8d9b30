"""A TCP server on 127.0.0.1 that is not the service a probe expects: it accepts connections
and then either never answers (``reply=None``) or answers ``reply`` to whatever it is sent."""

import socket
import threading
from types import TracebackType
from typing import Self


class TcpStub:
    def __init__(self, reply: bytes | None = None) -> None:
        self.reply = reply
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self._connections: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tcp-stub", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._connections.append(connection)
            connection.settimeout(1.0)
            try:
                if connection.recv(65536) and self.reply is not None:
                    connection.sendall(self.reply)
            except OSError:
                pass  # the client gave up first: fine for a stub

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for connection in self._connections:
            connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
