"""The sd_notify client against real AF_UNIX datagram sockets, as systemd would listen."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from spek_sentinel.service import sd_notify
from spek_sentinel.service.sd_notify import Notifier


class Receiver:
    """A bound datagram socket playing systemd's notify socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value  # what $NOTIFY_SOCKET says

    def receive(self) -> list[str]:
        data = self.sock.recv(4096)
        return data.decode().split("\n")

    def nothing_waiting(self) -> bool:
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(timeout)
        return False


def _bound(address: str, env_value: str) -> Iterator[Receiver]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
        sock.settimeout(10)  # only catches a hang: every datagram is sent before recv
        yield Receiver(sock, env_value)
    finally:
        sock.close()


@pytest.fixture
def path_receiver() -> Iterator[Receiver]:
    # A short directory of our own: AF_UNIX paths are limited to 108 bytes, which a deep
    # pytest tmp_path can exceed.
    directory = Path(tempfile.mkdtemp(prefix="sdn-"))
    try:
        path = str(directory / "notify")
        yield from _bound(path, path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"spek-sentinel-test/notify/{uuid.uuid4().hex}"
    yield from _bound("\0" + name, "@" + name)


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    found: Receiver = request.getfixturevalue(f"{request.param}_receiver")
    monkeypatch.setenv("NOTIFY_SOCKET", found.env_value)
    yield found


def test_ready_watchdog_stopping_reach_the_socket(receiver: Receiver) -> None:
    assert sd_notify.ready() is True
    assert receiver.receive() == ["READY=1"]
    assert sd_notify.watchdog() is True
    assert receiver.receive() == ["WATCHDOG=1"]
    assert sd_notify.stopping() is True
    assert receiver.receive() == ["STOPPING=1"]


def test_status_is_one_line_whatever_the_text(receiver: Receiver) -> None:
    sd_notify.status("watching 12 rules")
    assert receiver.receive() == ["STATUS=watching 12 rules"]
    # a newline must not smuggle in a second assignment
    sd_notify.status("rolling back\nREADY=1")
    assert receiver.receive() == ["STATUS=rolling back READY=1"]


def test_reloading_carries_the_monotonic_clock(receiver: Receiver) -> None:
    before = time.monotonic_ns() // 1000
    sd_notify.reloading()
    first, second = receiver.receive()
    after = time.monotonic_ns() // 1000
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_without_notify_socket_every_call_is_a_no_op(
    monkeypatch: pytest.MonkeyPatch, path_receiver: Receiver
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify.ready() is False
    assert sd_notify.watchdog() is False
    assert sd_notify.stopping() is False
    assert sd_notify.reloading() is False
    assert sd_notify.status("x") is False
    assert Notifier.from_environment().enabled is False
    assert path_receiver.nothing_waiting()


@pytest.mark.parametrize("value", ["", "relative/notify", "vsock:2:1234"])
def test_a_socket_this_client_cannot_use_is_not_under_systemd(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sd_notify.ready() is False


def test_a_socket_nobody_listens_on_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="sdn-"))
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(directory / "gone"))
        assert sd_notify.ready() is False  # the daemon goes on; systemd's timeout decides
        assert "sd_notify READY=1 failed" in caplog.text
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_unset_keeps_the_variables_from_children(path_receiver: Receiver) -> None:
    env = {
        "NOTIFY_SOCKET": path_receiver.env_value,
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid()),
        "PATH": "/usr/bin",
    }
    notifier = Notifier.from_environment(env, unset=True)
    assert env == {"PATH": "/usr/bin"}
    assert notifier.watchdog_interval() == 15.0
    assert notifier.ready() is True
    assert path_receiver.receive() == ["READY=1"]


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),  # WatchdogSec=30: a keep-alive every 15 s
        ({"WATCHDOG_USEC": "1500000"}, 0.75),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "self"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "other"}, None),  # meant for another pid
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_this_process(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], interval: float | None
) -> None:
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        pids = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}
        monkeypatch.setenv(name, pids.get(value, value))
    assert sd_notify.watchdog_interval() == interval
