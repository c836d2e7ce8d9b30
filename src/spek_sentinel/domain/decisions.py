"""What the policy decided to do about a verdict."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from spek_sentinel.domain.verdicts import Verdict


class Action(enum.StrEnum):
    ROLLBACK = "rollback"
    PAGE = "page"
    RESOLVE = "resolve"
    NONE = "none"


class PageKind(enum.StrEnum):
    BREACH = "breach"  # an evaluate rule fired: a human decides
    BLIND = "blind"  # the sentinel cannot see a signal
    HELD = "held"  # an immediate rule fired, automatic rollback withheld (cooldown, no ack)
    SHADOW = "shadow"  # shadow mode: would have rolled back
    JOINED = "joined"  # another rule fired inside an incident already rolled back
    VALIDATION = "validation"  # a post-rollback validation limit was crossed


@dataclass(frozen=True, slots=True)
class Rollback:
    action: ClassVar[Action] = Action.ROLLBACK
    verdict: Verdict
    incident: str
    playbook: str
    reason: str
    approved_by: str | None = None  # a human answered "roll back now"; None when automatic
    not_before: float | None = None  # the veto window: run at this time unless vetoed


@dataclass(frozen=True, slots=True)
class Refused:
    """A human's answer the policy will not carry out, and why (said back to the human)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Page:
    action: ClassVar[Action] = Action.PAGE
    verdict: Verdict
    incident: str | None
    kind: PageKind
    reason: str


@dataclass(frozen=True, slots=True)
class Resolve:
    action: ClassVar[Action] = Action.RESOLVE
    verdict: Verdict
    incident: str | None
    reason: str
    incident_closed: bool = False


@dataclass(frozen=True, slots=True)
class Nothing:
    action: ClassVar[Action] = Action.NONE
    verdict: Verdict
    reason: str
    incident: str | None = None


Decision = Rollback | Page | Resolve | Nothing
