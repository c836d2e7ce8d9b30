"""The escalation path as plain values: who is paged, through which pagers, and when.

The runbook's "Emergency Contacts > Escalation Path" as data. The config builds these from
``[escalation]``; the deciding side reads them with no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EscalationLevel:
    name: str  # "development_team", or "on-call" when the table names no levels
    contacts: tuple[str, ...]  # who this level reaches (shown in pages and reports)
    pagers: tuple[str, ...]  # names of [pagers.NAME] sections
    after: float  # seconds an alert has been open, unresolved and unacknowledged, before paging


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    levels: tuple[EscalationLevel, ...] = ()  # empty: no pagers, nothing is paged
    renotify_every: float = 900.0  # repeat an open unacknowledged page this often; 0 = never
    # an acknowledged alert unresolved this long re-opens and escalation resumes; 0 = never
    ack_timeout: float = 0.0

    def __post_init__(self) -> None:
        if self.levels and self.levels[0].after != 0:
            raise ValueError("the first escalation level is paged at once (after 0)")
        for earlier, later in zip(self.levels, self.levels[1:], strict=False):
            if later.after <= earlier.after:
                raise ValueError(
                    f"escalation level {later.name!r} must come after {earlier.name!r}"
                )
        if self.renotify_every < 0 or self.ack_timeout < 0:
            raise ValueError("renotify_every and ack_timeout are 0 or more seconds")

    def reached(self, open_for: float) -> tuple[EscalationLevel, ...]:
        """The levels paged once an alert has been open ``open_for`` seconds (in order)."""
        return tuple(level for level in self.levels if level.after <= open_for)

    @property
    def pagers(self) -> tuple[str, ...]:
        """Every pager some level uses, each once, in the order they first appear."""
        return tuple(dict.fromkeys(name for level in self.levels for name in level.pagers))
