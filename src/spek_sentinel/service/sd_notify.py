"""A tiny sd_notify client: tell systemd (``Type=notify``) how the service is doing.

The protocol (``sd_notify(3)``): one datagram of newline-separated ``KEY=VALUE`` lines sent to
the AF_UNIX socket named by ``$NOTIFY_SOCKET``, a filesystem path or, with a leading ``@``, a
name in the abstract namespace. Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op
that returns False, so the daemon calls these unconditionally.

A send that fails raises ``OSError``: the caller logs it (a missed keep-alive is worth a line;
the watchdog restarts the service if they keep failing).

The daemon's use:

- ``ready()`` once probes, store and HTTP API are up; ``status(text)`` whenever there is
  something a ``systemctl status`` reader wants to see;
- ``watchdog()`` every ``watchdog_interval()`` seconds from the loop that does the work, so a
  wedged loop stops the keep-alives and systemd restarts the service;
- ``reloading()`` on SIGHUP before re-reading the config, then ``ready()`` again;
- ``stopping()`` when shutdown begins.

``Notifier.from_environment(unset=True)`` takes the variables out of ``os.environ`` so the
children a rollback starts (pg_dump, docker, npm) do not inherit them.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
_VARIABLES = (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID)


@dataclass(frozen=True, slots=True)
class Notifier:
    """Where notifications go (None: not under systemd) and the watchdog period asked for."""

    address: str | None
    watchdog_usec: int | None = None

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = False
    ) -> Notifier:
        env = os.environ if environ is None else environ
        notifier = cls(_socket_address(env.get(NOTIFY_SOCKET)), _watchdog_usec(env))
        if unset:
            for name in _VARIABLES:
                env.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; False when not under systemd."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:  # systemd gone or restarting: say so, never crash the daemon
            log.warning("sd_notify %s failed: %s", assignments[0] if assignments else "", exc)
            return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (253+, Type=notify-reload) match the reload to this
        # message; older versions ignore it. Send ready() when the reload is done.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        # One line: a newline in the text would start another assignment (READY=1, ...).
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog_interval(self) -> float | None:
        """Seconds between keep-alives: half the watchdog timeout, as sd_watchdog_enabled(3)
        advises; None when no watchdog is asked for this process."""
        if self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2 / 1_000_000


def _socket_address(value: str | None) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]  # the abstract namespace: a leading NUL byte, no file
    if value.startswith("/"):
        return value
    return None  # another transport (vsock:, systemd 253+) that this client does not speak


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    try:
        usec = int(env.get(WATCHDOG_USEC, ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get(WATCHDOG_PID)
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None  # the watchdog is meant for another process (our parent's)
        except ValueError:
            return None
    return usec


def ready() -> bool:
    return Notifier.from_environment().ready()


def reloading() -> bool:
    return Notifier.from_environment().reloading()


def stopping() -> bool:
    return Notifier.from_environment().stopping()


def watchdog() -> bool:
    return Notifier.from_environment().watchdog()


def status(text: str) -> bool:
    return Notifier.from_environment().status(text)


def watchdog_interval() -> float | None:
    return Notifier.from_environment().watchdog_interval()
