"""Build the pagers a configuration declares, with their secrets read from env or files.

``validate`` checks only the table; the secrets are read here, when the service starts (or a
command needs the pagers), so a variable that is not set is a ConfigError naming the variable
and the key that named it (``pagers.oncall.routing_key_env``), never the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from spek_sentinel.config import Config
from spek_sentinel.config.paging import (
    PagerDutyPagerModel,
    PagerModel,
    SlackPagerModel,
    WebhookPagerModel,
)
from spek_sentinel.domain.errors import ConfigError, ConfigProblem
from spek_sentinel.paging.alertmanager import AlertmanagerPager, AlertmanagerSettings
from spek_sentinel.paging.base import Pager
from spek_sentinel.paging.pagerduty import PagerDutyPager, PagerDutySettings
from spek_sentinel.paging.slack import SlackPager, SlackSettings
from spek_sentinel.paging.webhook import WebhookPager, WebhookSettings
from spek_sentinel.secrets import read_secret

PagerSettings = WebhookSettings | SlackSettings | PagerDutySettings | AlertmanagerSettings


@dataclass(frozen=True, slots=True)
class InboundSecrets:
    """What authenticates answers coming back (``[inbound]``); None: that channel is refused."""

    pagerduty: str | None = field(repr=False)  # PagerDuty webhook v3 signing secret
    slack: str | None = field(repr=False)  # Slack app signing secret
    max_age: float = 300.0  # seconds; older signed requests are refused


def _slack_url(section: str, model: SlackPagerModel, environ: Mapping[str, str]) -> str:
    secret = read_secret(
        section,
        environ,
        field="webhook_url",
        env=model.webhook_url_env,
        file=model.webhook_url_file,
    )
    parts = urlsplit(secret.value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # the value is the credential: say what is wrong, never what it is
        raise secret.problem("is not an http(s) URL (expected https://hooks.slack.com/...)")
    return secret.value


def _settings(name: str, model: PagerModel, environ: Mapping[str, str]) -> PagerSettings:
    section = f"pagers.{name}"
    if isinstance(model, WebhookPagerModel):
        secret = read_secret(
            section, environ, field="secret", env=model.secret_env, file=model.secret_file
        )
        return WebhookSettings(url=model.url, secret=secret.value, timeout=model.timeout)
    if isinstance(model, SlackPagerModel):
        return SlackSettings(webhook_url=_slack_url(section, model, environ), timeout=model.timeout)
    if isinstance(model, PagerDutyPagerModel):
        key = read_secret(
            section,
            environ,
            field="routing_key",
            env=model.routing_key_env,
            file=model.routing_key_file,
        )
        return PagerDutySettings(
            routing_key=key.value, url=model.url, component=model.component, timeout=model.timeout
        )
    token = None
    if model.token_env is not None or model.token_file is not None:
        token = read_secret(
            section, environ, field="token", env=model.token_env, file=model.token_file
        ).value
    return AlertmanagerSettings(
        url=model.url,
        token=token,
        timeout=model.timeout,
        hold=model.hold,
        labels=dict(model.labels),
        name=name,
    )


def pager_settings(config: Config, environ: Mapping[str, str]) -> dict[str, PagerSettings]:
    """Every ``[pagers.NAME]`` as its pager's settings, secrets read; ConfigError naming every
    secret that cannot be read (all of them, not only the first)."""
    found: dict[str, PagerSettings] = {}
    problems: list[ConfigProblem] = []
    for name, model in config.model.pagers.items():
        try:
            found[name] = _settings(name, model, environ)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return found


def pager_for(name: str, settings: PagerSettings) -> Pager:
    if isinstance(settings, WebhookSettings):
        return WebhookPager(name, settings)
    if isinstance(settings, SlackSettings):
        return SlackPager(name, settings)
    if isinstance(settings, PagerDutySettings):
        return PagerDutyPager(name, settings)
    return AlertmanagerPager(settings)


def build_pagers(config: Config, environ: Mapping[str, str]) -> dict[str, Pager]:
    """The configured pagers by name. Every secret is read before any pager (and its HTTP
    client) is made, so a ConfigError leaves nothing to close. Close them with ``aclose``."""
    return {name: pager_for(name, s) for name, s in pager_settings(config, environ).items()}


def inbound_secrets(config: Config, environ: Mapping[str, str]) -> InboundSecrets:
    """``[inbound]`` with its secrets read; ConfigError naming each one that cannot be."""
    settings = config.model.inbound
    problems: list[ConfigProblem] = []
    values: dict[str, str | None] = {}
    sources = {
        "pagerduty_secret": (settings.pagerduty_secret_env, settings.pagerduty_secret_file),
        "slack_signing_secret": (
            settings.slack_signing_secret_env,
            settings.slack_signing_secret_file,
        ),
    }
    for key, (env, file) in sources.items():
        values[key] = None
        if env is None and file is None:
            continue
        try:
            values[key] = read_secret("inbound", environ, field=key, env=env, file=file).value
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return InboundSecrets(
        pagerduty=values["pagerduty_secret"],
        slack=values["slack_signing_secret"],
        max_age=settings.max_age,
    )


def pager_secrets(settings: Mapping[str, PagerSettings]) -> list[str]:
    """The secret values among the pagers' settings, for the log redactor."""
    found: list[str] = []
    for one in settings.values():
        if isinstance(one, WebhookSettings):
            found.append(one.secret)
        elif isinstance(one, SlackSettings):
            found.append(one.webhook_url)
        elif isinstance(one, PagerDutySettings):
            found.append(one.routing_key)
        elif one.token is not None:
            found.append(one.token)
    return [value for value in found if value]
