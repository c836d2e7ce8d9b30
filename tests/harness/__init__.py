"""Throwaway PostgreSQL and Redis servers on 127.0.0.1 for the test suites."""

from pathlib import Path


class HarnessError(RuntimeError):
    """A test service could not be provided; the message says what to install or fix."""


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"
