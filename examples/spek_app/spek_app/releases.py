"""The releases of the sample app: each version names the schema it migrates to and at most one
fault. Stdlib only: the image build script reads this table with a bare Python.

A fault is chosen by the version alone, never by a separate setting: rolling a container back
to the previous image keeps the environment its operator gave it, so a fault switched on by an
environment variable would survive the rollback. The ``SPEK_APP_*`` tuning variables below only
size a fault that the version already selects.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Fault(enum.StrEnum):
    ERRORS = "errors"  # ~30% of API requests and WebSocket handshakes answer 500
    CRASH = "crash"  # exits with a traceback at start, before it listens
    LEAK = "leak"  # resident memory grows steadily
    SLOW = "slow"  # every API response is delayed
    BAD_MIGRATION = "badmigration"  # migration 004 fails halfway: the app never starts
    CORRUPT = "corrupt"  # the agent writes agent_tasks rows the integrity query counts
    BREACH = "breach"  # admin routes served without authentication, reported as a breach


@dataclass(frozen=True, slots=True)
class Release:
    version: str
    schema: int  # the migration version this release's `migrate up` goes to
    fault: Fault | None
    summary: str

    @property
    def good(self) -> bool:
        return self.fault is None


RELEASES: dict[str, Release] = {
    r.version: r
    for r in (
        Release("v1.0.0", 2, None, "agents and agent tasks (migrations 001-002)"),
        Release("v1.1.0", 3, None, "adds audit logs (migration 003)"),
        Release("v2.0.0-errors", 3, Fault.ERRORS, "about 30% of API requests answer 500"),
        Release("v2.0.0-crash", 3, Fault.CRASH, "crashes at start"),
        Release("v2.0.0-leak", 3, Fault.LEAK, "resident memory grows steadily"),
        Release("v2.0.0-slow", 3, Fault.SLOW, "every API response is slow"),
        Release("v2.0.0-badmigration", 4, Fault.BAD_MIGRATION, "migration 004 fails halfway"),
        Release("v2.0.0-corrupt", 3, Fault.CORRUPT, "writes corrupted agent_tasks rows"),
        Release("v2.0.0-breach", 3, Fault.BREACH, "serves admin routes without authentication"),
    )
}
GOOD = "v1.1.0"  # the release a bad one is deployed over


class UnknownReleaseError(ValueError):
    def __init__(self, version: str) -> None:
        super().__init__(f"no release {version!r}; releases: {', '.join(RELEASES)}")


def release(version: str) -> Release:
    try:
        return RELEASES[version]
    except KeyError:
        raise UnknownReleaseError(version) from None
