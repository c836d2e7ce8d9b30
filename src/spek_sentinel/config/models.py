"""The shape of thresholds.toml. Cross-references between sections are checked in compile.py."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from spek_sentinel.config.paging import (
    EscalationSettings,
    InboundSettings,
    NoticeSettings,
    PagerModel,
)
from spek_sentinel.config.probes import Probe
from spek_sentinel.config.rollback import RollbackSettings
from spek_sentinel.config.types import (
    Duration,
    Name,
    PositiveDuration,
    Ratio,
    StrictModel,
    ThresholdValue,
)


class SentinelSettings(StrictModel):
    auto_rollback: bool = True  # false = shadow mode: decide and page, never execute
    cooldown: Duration = 3600.0  # at most one automatic rollback per cooldown
    state_dir: str = "/var/lib/spek-sentinel"  # incidents, pushed signals, journal (SQLite)
    # the state in PostgreSQL instead (replicas on several hosts share it): the DSN is a
    # secret, named by an environment variable or a file; neither = SQLite under state_dir
    state_dsn_env: str | None = None
    state_dsn_file: str | None = None
    # before an automatic rollback: page "rolling back in N s unless vetoed"; "0s" = at once
    veto_window: Duration = 0.0

    @model_validator(mode="after")
    def _one_state_dsn(self) -> SentinelSettings:
        if self.state_dsn_env is not None and self.state_dsn_file is not None:
            raise ValueError("set state_dsn_env or state_dsn_file, not both")
        return self


class ApiSettings(StrictModel):
    """The HTTP API. Mutating routes need the bearer token from ``token_env`` or ``token_file``;
    with neither set they are refused (fail closed), read-only routes still answer."""

    listen: str = "127.0.0.1:9102"
    token_env: str | None = None
    token_file: str | None = None


class HaSettings(StrictModel):
    """Leader election for two or three replicas (spek_sentinel.ha). Only the leader starts
    rollbacks, escalates and sends pages; the others evaluate and serve read-only routes."""

    backend: Literal["none", "redis", "postgres"] = "none"
    url_env: str | None = None  # the Redis URL or PostgreSQL DSN (a secret: env or file)
    url_file: str | None = None
    fence_dsn_env: str | None = None  # PostgreSQL holding the fence (highest token)
    fence_dsn_file: str | None = None
    key: str = "spek-sentinel:leader"  # Redis key
    lock_id: int = 0x5E4C  # PostgreSQL advisory lock id
    ttl: PositiveDuration = 15.0
    replica: str | None = None  # this replica's name (default: host name and pid)

    @model_validator(mode="after")
    def _needs_url(self) -> HaSettings:
        given = (self.url_env is not None) + (self.url_file is not None)
        if self.backend == "none" and given:
            raise ValueError("url_env / url_file need backend = 'redis' or 'postgres'")
        if self.backend != "none" and given != 1:
            raise ValueError(f"backend '{self.backend}' needs exactly one of url_env, url_file")
        if self.fence_dsn_env is not None and self.fence_dsn_file is not None:
            raise ValueError("set fence_dsn_env or fence_dsn_file, not both")
        return self


class Defaults(StrictModel):
    interval: PositiveDuration = 15.0  # probe interval when a probe does not say
    max_gap_intervals: float = Field(default=3.0, ge=1)  # coverage gap, in probe intervals
    blind_after: PositiveDuration = 300.0


class RuleBase(StrictModel):
    name: Name
    description: str = ""
    signal: Name
    severity: Literal["immediate", "evaluate"]
    playbook: Name | None = None
    for_: Duration = Field(default=0.0, alias="for")
    keep_firing_for: Duration = 0.0
    min_samples: int = Field(default=1, ge=1)
    max_gap: PositiveDuration | None = None
    blind_after: PositiveDuration | None = None
    missing: Literal["unknown", "ok", "breach"] = "unknown"


class ThresholdRule(RuleBase):
    kind: Literal["threshold"]
    above: ThresholdValue | None = None
    below: ThresholdValue | None = None
    clear_below: ThresholdValue | None = None  # hysteresis line for an ``above`` rule
    clear_above: ThresholdValue | None = None  # hysteresis line for a ``below`` rule
    min_volume: float | None = Field(default=None, ge=0)


class BaselineSpec(StrictModel):
    method: Literal["rolling_median", "before_release"] = "rolling_median"
    window: PositiveDuration = 3600.0
    min_samples: int = Field(default=10, ge=1)


class RelativeRule(RuleBase):
    kind: Literal["relative"]
    increase: float = Field(gt=0, le=100)  # 0.5 = 50% above the baseline
    clear_increase: float | None = Field(default=None, ge=0)
    baseline: BaselineSpec = BaselineSpec()
    min_volume: float | None = Field(default=None, ge=0)


class TrendRule(RuleBase):
    kind: Literal["trend"]
    window: PositiveDuration
    min_growth: float = Field(gt=0)  # 0.2 = grew 20% over the window
    min_rising: Ratio = 0.8  # share of consecutive samples that rose
    min_slope: float = Field(default=0.0, ge=0)  # units per second
    min_window_samples: int = Field(default=5, ge=2)
    warmup: Duration = 0.0


class EventRule(RuleBase):
    kind: Literal["event"]
    at_least: float = 1.0


RuleModel = Annotated[
    ThresholdRule | RelativeRule | TrendRule | EventRule, Field(discriminator="kind")
]


class PlaybookModel(StrictModel):
    """A runbook scenario as data. The executor (rollback package) carries it out."""

    scenario: str
    stop_first: bool = True
    database: list[Literal["migrate_down", "migrate_down_all", "restore"]] = []
    migrate_to_version: int | None = Field(default=None, ge=0)  # migrate_down: to this version
    restore_from: Literal["pre_deployment", "last_known_good"] | None = None
    application: Literal["previous_release", "rebuild", "none"] = "previous_release"
    rotate_secrets: list[str] = []


class ValidationCheck(StrictModel):
    """A limit from the post-rollback validation table: the signal must stay below it."""

    name: Name
    signal: Name
    below: ThresholdValue
    for_: Duration = Field(default=60.0, alias="for")
    description: str = ""


class Validation(StrictModel):
    monitor_for: Duration = 3600.0
    checks: list[ValidationCheck] = []


class ConfigModel(StrictModel):
    sentinel: SentinelSettings = SentinelSettings()
    api: ApiSettings = ApiSettings()
    ha: HaSettings = HaSettings()
    defaults: Defaults = Defaults()
    probes: dict[Name, Probe] = Field(min_length=1)
    playbooks: dict[Name, PlaybookModel] = {}
    rules: list[RuleModel] = Field(min_length=1)
    validation: Validation = Validation()
    rollback: RollbackSettings = RollbackSettings()
    # paging (config/paging.py); none of it is required: no pagers means nothing is paged
    pagers: dict[Name, PagerModel] = {}
    escalation: EscalationSettings = EscalationSettings()
    notices: NoticeSettings = NoticeSettings()
    inbound: InboundSettings = InboundSettings()
