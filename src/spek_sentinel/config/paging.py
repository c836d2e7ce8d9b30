"""Paging sections: ``[pagers.NAME]``, ``[escalation]``, ``[notices]`` and ``[inbound]``.

Only what the table may say lives here, so that ``validate`` catches a typo; the pagers
themselves are built (and their secrets read) in ``spek_sentinel.paging.build``. Secrets (HMAC
keys, Slack webhook URLs, PagerDuty routing keys, tokens) are never in the table: each section
names an environment variable (``*_env``) or a file (``*_file``) holding one.

Cross-references (an escalation level or ``[notices]`` naming a pager that does not exist,
levels out of order) are checked by ``paging_problems`` with the key path of the offending
entry, together with the other cross-checks.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from spek_sentinel.config.types import Duration, Name, PositiveDuration, StrictModel
from spek_sentinel.domain.units import format_duration

# The Events API v2 endpoint (spek_sentinel.paging.pagerduty.EVENTS_URL; config may not import
# the paging package, a test holds the two equal).
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
PAGER_TYPES = ("webhook", "slack", "pagerduty", "alertmanager")
DEFAULT_LEVEL = "on-call"  # the one level used when pagers are defined without [escalation]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_secret_source(
    field: str, env: str | None, file: str | None, *, required: bool = True
) -> None:
    """``<field>_env`` / ``<field>_file``: exactly one (at most one when not ``required``), and
    the variable is a variable's name. Never echoes the value: a secret pasted into the
    ``_env`` key by mistake must not reach the logs."""
    if env is not None and file is not None:
        raise ValueError(f"set only one of {field}_env or {field}_file, not both")
    if required and env is None and file is None:
        raise ValueError(
            f"set exactly one of {field}_env or {field}_file (secrets stay out of the table)"
        )
    if env is not None and not _ENV_NAME.fullmatch(env):
        raise ValueError(f"{field}_env: give the name of an environment variable, not the value")
    if file is not None and not file.strip():
        raise ValueError(f"{field}_file: give the path of a file")


def check_url(key: str, url: str) -> None:
    """An http(s) URL without credentials in it; never echoes a URL that carries some."""
    scheme, sep, rest = url.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    if "@" in authority:
        raise ValueError(f"{key}: credentials do not belong in the table")
    if not sep or scheme.lower() not in ("http", "https") or not authority.strip(":"):
        raise ValueError(f"{key} {url!r}: expected http://host[:port][/path] or https://...")


class WebhookPagerModel(StrictModel):
    """A generic JSON webhook, signed with HMAC-SHA256 (``paging/webhook.py``)."""

    type: Literal["webhook"]
    url: str
    secret_env: str | None = None  # the HMAC key
    secret_file: str | None = None
    timeout: PositiveDuration = 10.0

    @model_validator(mode="after")
    def _check(self) -> WebhookPagerModel:
        check_url("url", self.url)
        check_secret_source("secret", self.secret_env, self.secret_file)
        return self


class SlackPagerModel(StrictModel):
    """A Slack incoming webhook. Its URL is the secret, so only where to find it is here."""

    type: Literal["slack"]
    webhook_url_env: str | None = None
    webhook_url_file: str | None = None
    timeout: PositiveDuration = 10.0

    @model_validator(mode="after")
    def _check(self) -> SlackPagerModel:
        check_secret_source("webhook_url", self.webhook_url_env, self.webhook_url_file)
        return self


class PagerDutyPagerModel(StrictModel):
    """A PagerDuty service through the Events API v2; the integration key is the secret."""

    type: Literal["pagerduty"]
    routing_key_env: str | None = None
    routing_key_file: str | None = None
    url: str = PAGERDUTY_EVENTS_URL  # another endpoint only for tests or a proxy
    component: str | None = None  # payload.component, e.g. "spek-app"
    timeout: PositiveDuration = 10.0

    @model_validator(mode="after")
    def _check(self) -> PagerDutyPagerModel:
        check_url("url", self.url)
        check_secret_source("routing_key", self.routing_key_env, self.routing_key_file)
        return self


class AlertmanagerPagerModel(StrictModel):
    """An Alertmanager (API v2). The bearer token is optional: many run without one."""

    type: Literal["alertmanager"]
    url: str  # base URL, such as http://127.0.0.1:9093 (a route prefix may follow)
    token_env: str | None = None
    token_file: str | None = None
    hold: PositiveDuration = 86400.0  # a firing alert nobody re-posts ends after this
    # extra labels for Alertmanager's routing (team = "spek")
    labels: dict[str, str] = Field(default_factory=dict)
    timeout: PositiveDuration = 10.0

    @model_validator(mode="after")
    def _check(self) -> AlertmanagerPagerModel:
        check_url("url", self.url)
        check_secret_source("token", self.token_env, self.token_file, required=False)
        for label in self.labels:
            if not _LABEL_NAME.fullmatch(label):
                raise ValueError(f"labels: {label!r} is not a label name ([A-Za-z_][A-Za-z0-9_]*)")
        return self


PagerModel = Annotated[
    WebhookPagerModel | SlackPagerModel | PagerDutyPagerModel | AlertmanagerPagerModel,
    Field(discriminator="type"),
]


class EscalationLevelModel(StrictModel):
    """Who is paged, through which pagers, once an alert has been open this long unresolved
    (and unacknowledged)."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    # who this level reaches, shown in the page and the report
    contacts: list[str] = Field(default_factory=list)
    pagers: list[Name] = Field(min_length=1)
    after: Duration = 0.0


class EscalationSettings(StrictModel):
    # empty: one level "on-call" paging every pager at once
    levels: list[EscalationLevelModel] = Field(default_factory=list)
    renotify_every: Duration = 900.0  # repeat an open, unacknowledged page; "0s" = never
    # an acknowledged alert still unresolved this long re-opens and escalation resumes;
    # "0s" = an acknowledgement never expires
    ack_timeout: Duration = 0.0


class NoticeSettings(StrictModel):
    """Stakeholder information (rollback started, phase done, finished or halted)."""

    pagers: list[Name] = Field(default_factory=list)


class InboundSettings(StrictModel):
    """Secrets that authenticate acknowledgements coming back: PagerDuty webhook v3 signatures
    and Slack request signatures. Without one, that channel's callbacks are refused."""

    pagerduty_secret_env: str | None = None
    pagerduty_secret_file: str | None = None
    slack_signing_secret_env: str | None = None
    slack_signing_secret_file: str | None = None
    max_age: PositiveDuration = 300.0  # older signed requests are refused (replays)

    @model_validator(mode="after")
    def _check(self) -> InboundSettings:
        check_secret_source(
            "pagerduty_secret",
            self.pagerduty_secret_env,
            self.pagerduty_secret_file,
            required=False,
        )
        check_secret_source(
            "slack_signing_secret",
            self.slack_signing_secret_env,
            self.slack_signing_secret_file,
            required=False,
        )
        return self


def _unknown_pagers(
    names: list[str], path: str, pagers: dict[str, PagerModel]
) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name not in pagers:
            known = ", ".join(sorted(pagers)) or "none ([pagers.NAME] sections)"
            problems.append((f"{path}[{index}]", f"unknown pager {name!r}; defined: {known}"))
        elif name in seen:
            problems.append((f"{path}[{index}]", f"pager {name!r} is listed twice"))
        seen.add(name)
    return problems


def paging_problems(
    pagers: dict[str, PagerModel], escalation: EscalationSettings, notices: NoticeSettings
) -> list[tuple[str, str]]:
    """(key path, reason) for every cross-reference problem of the paging sections."""
    problems: list[tuple[str, str]] = []
    names: dict[str, int] = {}
    previous: EscalationLevelModel | None = None
    for index, level in enumerate(escalation.levels):
        path = f"escalation.levels[{index}]"
        if level.name in names:
            problems.append(
                (
                    f"{path}.name",
                    f"duplicate level name {level.name!r} "
                    f"(first at escalation.levels[{names[level.name]}])",
                )
            )
        names.setdefault(level.name, index)
        problems.extend(_unknown_pagers(level.pagers, f"{path}.pagers", pagers))
        if previous is None and level.after != 0:
            problems.append(
                (f"{path}.after", "the first level is paged at once: 'after' must be \"0s\"")
            )
        elif previous is not None and level.after <= previous.after:
            problems.append(
                (
                    f"{path}.after",
                    f"must be later than escalation.levels[{index - 1}].after "
                    f"({format_duration(previous.after)}); levels escalate in order",
                )
            )
        previous = level
    problems.extend(_unknown_pagers(notices.pagers, "notices.pagers", pagers))
    return problems
