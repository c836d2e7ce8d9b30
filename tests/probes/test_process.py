"""The process probe against real child processes that allocate memory, exit and linger."""

import asyncio
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pydantic
import pytest

from harness.wait import wait_until
from spek_sentinel.config.probes import ProcessProbe
from spek_sentinel.domain.samples import Sample
from spek_sentinel.probes.base import observe
from spek_sentinel.probes.process import LocalProcessProbe, build

MIB = 1 << 20
# Says "ready" once started; each line on stdin makes it hold 32 MiB more, every page touched.
CHILD = """
import sys
held = []
print("ready", flush=True)
for line in sys.stdin:
    held.append(b"\\x01" * (32 << 20))
    print("grown", flush=True)
"""


class Child:
    """A python child process whose command line carries a token the test can match."""

    def __init__(self, token: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, token],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "ready\n"

    def grow(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("grow\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "grown\n"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def token() -> str:
    return f"spek-test-process-{uuid.uuid4().hex}"


@pytest.fixture
def children(token: str) -> Iterator[Callable[[], Child]]:
    """Starts children carrying this test's token; kills and reaps them afterwards."""
    started: list[Child] = []

    def start() -> Child:
        child = Child(token)
        started.append(child)
        child.wait_ready()
        return child

    yield start
    for child in started:
        child.close()


def probe(**section: Any) -> LocalProcessProbe:
    model = ProcessProbe.model_validate(
        {
            "kind": "process",
            **section,
            "signals": {
                "app_up": {"unit": "bool", "measure": "up"},
                "app_rss": {"unit": "bytes", "measure": "rss"},
            },
        }
    )
    return build("app_process", model, 1.0, {})


def collect(target: LocalProcessProbe) -> dict[str, Sample]:
    return {sample.signal: sample for sample in asyncio.run(observe(target))}


def values(target: LocalProcessProbe) -> tuple[float | None, float | None]:
    samples = collect(target)
    errors = [s.error for s in samples.values() if s.error is not None]
    assert not errors, errors
    return samples["app_up"].value, samples["app_rss"].value


def write_pid_file(directory: Path, pid: int) -> Path:
    path = directory / "app.pid"
    path.write_text(f"{pid}\n")
    return path


def test_process_found_by_pid_file_is_up_with_its_rss(
    children: Callable[[], Child], tmp_path: Path
) -> None:
    child = children()
    up, rss = values(probe(pid_file=str(write_pid_file(tmp_path, child.pid))))
    assert up == 1.0
    assert rss == pytest.approx(psutil.Process(child.pid).memory_info().rss, rel=0.2)


def test_process_found_by_match_has_rss_that_grows_as_it_allocates(
    children: Callable[[], Child], token: str
) -> None:
    child = children()
    target = probe(match=re.escape(token))
    up, before = values(target)
    assert up == 1.0 and before is not None and before > 0
    child.grow()
    child.grow()
    wait_until(
        lambda: (values(target)[1] or 0) >= before + 60 * MIB,
        timeout=10,
        message="rss did not grow by the 64 MiB the child allocated",
    )


def test_killed_process_is_down_with_no_rss(
    children: Callable[[], Child], token: str, tmp_path: Path
) -> None:
    child = children()
    by_pid_file = probe(pid_file=str(write_pid_file(tmp_path, child.pid)))
    by_match = probe(match=re.escape(token))
    assert values(by_pid_file)[0] == values(by_match)[0] == 1.0
    child.close()  # killed and reaped
    assert values(by_pid_file) == (0.0, None)
    assert values(by_match) == (0.0, None)


def test_zombie_process_is_down(children: Callable[[], Child], tmp_path: Path) -> None:
    child = children()
    target = probe(pid_file=str(write_pid_file(tmp_path, child.pid)))
    child.proc.kill()  # not reaped yet: the pid exists as a zombie
    wait_until(
        lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE,
        timeout=10,
        message="the killed child did not become a zombie",
    )
    assert values(target) == (0.0, None)


def test_stale_pid_file_is_down(children: Callable[[], Child], tmp_path: Path) -> None:
    child = children()
    child.close()  # the pid file outlives its process
    assert values(probe(pid_file=str(write_pid_file(tmp_path, child.pid)))) == (0.0, None)


def test_pid_file_naming_another_program_is_down_when_match_is_set(
    children: Callable[[], Child], token: str, tmp_path: Path
) -> None:
    other = subprocess.Popen(["sleep", "600"])
    try:
        pid_file = str(write_pid_file(tmp_path, other.pid))
        assert values(probe(pid_file=pid_file, match=re.escape(token))) == (0.0, None)
        assert values(probe(pid_file=pid_file, match=r"^sleep 600$"))[0] == 1.0
    finally:
        other.kill()
        other.wait(timeout=10)


def test_missing_pid_file_is_down(tmp_path: Path) -> None:
    assert values(probe(pid_file=str(tmp_path / "never-written.pid"))) == (0.0, None)


@pytest.mark.parametrize(
    ("content", "expected"),
    [("not-a-pid\n", "holds 'not-a-pid', not a process id"), ("", "holds '', not a process id")],
)
def test_garbage_pid_file_gives_error_samples(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "app.pid"
    path.write_text(content)
    samples = collect(probe(pid_file=str(path)))
    assert [s.kind for s in samples.values()] == ["error", "error"]
    assert all(expected in str(s.error) for s in samples.values())


def test_unreadable_pid_file_gives_error_samples(tmp_path: Path) -> None:
    samples = collect(probe(pid_file=str(tmp_path)))  # a directory, not a file
    assert [s.kind for s in samples.values()] == ["error", "error"]
    assert all(f"cannot read pid file {tmp_path}" in str(s.error) for s in samples.values())


def test_several_matches_read_the_oldest_process(children: Callable[[], Child], token: str) -> None:
    oldest = children()
    oldest.grow()
    oldest.grow()  # 64 MiB more than the younger one
    younger = children()
    up, rss = values(probe(match=re.escape(token)))
    assert up == 1.0
    assert rss == pytest.approx(psutil.Process(oldest.pid).memory_info().rss, rel=0.1)
    assert rss is not None and rss > psutil.Process(younger.pid).memory_info().rss + 50 * MIB


def test_no_matching_process_is_down() -> None:
    assert values(probe(match=f"spek-test-nothing-{uuid.uuid4().hex}")) == (0.0, None)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({}, "set pid_file, match, or both"),
        ({"match": "app[("}, "is not a regular expression"),
        ({"match": ""}, "at least 1 character"),
    ],
)
def test_config_needs_a_way_to_find_the_process(section: dict[str, str], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=re.escape(message)):
        probe(**section)
