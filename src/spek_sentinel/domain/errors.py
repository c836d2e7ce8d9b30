"""The error tree. Whether an error is worth retrying is a property of the error itself."""

from __future__ import annotations

from dataclasses import dataclass


class SentinelError(Exception):
    """Root of every error spek-sentinel raises on purpose."""

    retryable: bool = False


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a configuration: where it is and why it is wrong."""

    source: str  # the file, or the environment variable that carried the value
    path: str  # key path such as ``rules[3].for``; empty when the whole source is at fault
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.path}" if self.path else self.source
        return f"{where}: {self.reason}"


class ConfigError(SentinelError):
    """A configuration that cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ProbeError(SentinelError):
    """A probe could not see its signal. The engine turns this into UNKNOWN, never a breach."""

    retryable = True


class RollbackError(SentinelError):
    """A rollback step failed. Rollbacks fail closed: halt and page, never guess."""


class PagerError(SentinelError):
    """A page could not be delivered. Paging fails open: the outbox retries."""

    retryable = True


class InputError(SentinelError):
    """Recorded input (such as a replay series) that cannot be read; names the line."""
