"""The paging sections: [pagers.NAME], [escalation], [notices], [inbound] and veto_window.

The table is checked by ``load_config`` (validate); the secrets are read only when the pagers
are built, so a missing variable is a build-time ConfigError naming the variable, never a value.
The secrets below are made-up test strings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from spek_sentinel.config import Config, load_config
from spek_sentinel.config.paging import PAGERDUTY_EVENTS_URL
from spek_sentinel.domain.errors import ConfigError
from spek_sentinel.domain.escalation import EscalationLevel, EscalationPolicy
from spek_sentinel.paging.alertmanager import AlertmanagerPager, AlertmanagerSettings
from spek_sentinel.paging.base import Pager
from spek_sentinel.paging.build import (
    InboundSecrets,
    build_pagers,
    inbound_secrets,
    pager_settings,
)
from spek_sentinel.paging.pagerduty import EVENTS_URL, PagerDutyPager, PagerDutySettings
from spek_sentinel.paging.slack import SlackPager, SlackSettings
from spek_sentinel.paging.webhook import WebhookPager, WebhookSettings

SHIPPED = Path(__file__).resolve().parent.parent / "thresholds.toml"
SHIPPED_TEXT = SHIPPED.read_text(encoding="utf-8")
PAGING_BANNER = "# " + "-" * 92 + "\n# Paging:"
MINUTE = 60.0
HOUR = 3600.0

SHIPPED_ENV = {
    "SPEK_PAGERDUTY_ROUTING_KEY": "test-routing-key-0123456789abcdef",
    "SPEK_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/TTEST/BTEST/test-slack-token",
    "SPEK_WEBHOOK_SECRET": "test-webhook-hmac-key",
    "SPEK_PAGERDUTY_WEBHOOK_SECRET": "test-pd-inbound-secret",
    "SPEK_SLACK_SIGNING_SECRET": "test-slack-signing-secret",
}

FULL = """
[pagers.relay]
type = "webhook"
url = "https://relay.example.test/page"
secret_env = "T_WEBHOOK_SECRET"
timeout = "5s"

[pagers.chat]
type = "slack"
webhook_url_file = "{slack_file}"
timeout = "3s"

[pagers.oncall]
type = "pagerduty"
routing_key_env = "T_ROUTING_KEY"
component = "spek-app"

[pagers.am]
type = "alertmanager"
url = "http://127.0.0.1:9093"
token_env = "T_AM_TOKEN"
hold = "2h"
labels = {{ team = "spek" }}
timeout = "4s"

[pagers.am_open]
type = "alertmanager"
url = "http://127.0.0.1:9094/prefix"

[escalation]
renotify_every = "10m"
ack_timeout = "45m"

[[escalation.levels]]
name = "first"
contacts = ["Development Team"]
pagers = ["oncall", "chat"]

[[escalation.levels]]
name = "second"
contacts = ["Lead Developer", "DevOps Engineer"]
pagers = ["relay", "am"]
after = "30m"

[[escalation.levels]]
name = "third"
pagers = ["am_open"]
after = "1h30m"

[notices]
pagers = ["chat", "relay"]

[inbound]
pagerduty_secret_file = "{pd_file}"
slack_signing_secret_env = "T_SLACK_SIGNING"
max_age = "2m"
"""
FULL_ENV = {
    "T_WEBHOOK_SECRET": "test-hmac",
    "T_ROUTING_KEY": "test-rk",
    "T_AM_TOKEN": "test-am-token",
    "T_SLACK_SIGNING": "test-signing",
}
SLACK_URL = "https://hooks.slack.com/services/TFULL/BFULL/test-file-token"


# ------------------------------------------------------------------------------------------------
# helpers: the shipped table with its paging part replaced
# ------------------------------------------------------------------------------------------------


def with_paging(tmp_path: Path, paging: str, *, sentinel: str = "") -> Path:
    text = SHIPPED_TEXT[: SHIPPED_TEXT.index(PAGING_BANNER)] + paging
    if sentinel:
        assert text.count('veto_window = "0s"\n') == 1
        text = text.replace('veto_window = "0s"\n', sentinel + "\n")
    path = tmp_path / "thresholds.toml"
    path.write_text(text, encoding="utf-8")
    return path


def full_config(tmp_path: Path) -> Config:
    slack_file = tmp_path / "slack-url"
    slack_file.write_text(SLACK_URL + "\n", encoding="utf-8")
    pd_file = tmp_path / "pd-secret"
    pd_file.write_text("test-pd-file-secret\n", encoding="utf-8")
    paging = FULL.format(slack_file=slack_file, pd_file=pd_file)
    return load_config(with_paging(tmp_path, paging, sentinel='veto_window = "90s"'), environ={})


def close(pagers: Mapping[str, Pager]) -> None:
    async def close_all() -> None:
        for pager in pagers.values():
            await pager.aclose()

    asyncio.run(close_all())


def load_error(path: Path, environ: Mapping[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ or {})
    return str(caught.value)


# ------------------------------------------------------------------------------------------------
# a valid table
# ------------------------------------------------------------------------------------------------


def test_a_full_table_gives_the_escalation_policy_it_says(tmp_path: Path) -> None:
    config = full_config(tmp_path)
    assert config.escalation == EscalationPolicy(
        levels=(
            EscalationLevel("first", ("Development Team",), ("oncall", "chat"), 0.0),
            EscalationLevel(
                "second", ("Lead Developer", "DevOps Engineer"), ("relay", "am"), 30 * MINUTE
            ),
            EscalationLevel("third", (), ("am_open",), 90 * MINUTE),
        ),
        renotify_every=10 * MINUTE,
        ack_timeout=45 * MINUTE,
    )
    assert config.notice_pagers == ("chat", "relay")
    assert config.policy.veto_window == 90.0
    assert [level.name for level in config.escalation.reached(30 * MINUTE)] == ["first", "second"]


def test_a_full_table_builds_each_pager_with_its_settings(tmp_path: Path) -> None:
    config = full_config(tmp_path)
    settings = pager_settings(config, FULL_ENV)

    relay = settings["relay"]
    assert isinstance(relay, WebhookSettings)
    assert (relay.url, relay.timeout) == ("https://relay.example.test/page", 5.0)
    assert relay.secret == FULL_ENV["T_WEBHOOK_SECRET"]

    chat = settings["chat"]
    assert isinstance(chat, SlackSettings)
    assert chat.timeout == 3.0
    assert chat.webhook_url == SLACK_URL  # read from the file, trailing newline stripped

    oncall = settings["oncall"]
    assert isinstance(oncall, PagerDutySettings)
    assert (oncall.url, oncall.component, oncall.timeout) == (EVENTS_URL, "spek-app", 10.0)
    assert oncall.routing_key == FULL_ENV["T_ROUTING_KEY"]

    am = settings["am"]
    assert isinstance(am, AlertmanagerSettings)
    assert (am.url, am.name, am.hold, am.timeout) == ("http://127.0.0.1:9093", "am", 2 * HOUR, 4.0)
    assert dict(am.labels) == {"team": "spek"}
    assert am.token == FULL_ENV["T_AM_TOKEN"]

    am_open = settings["am_open"]
    assert isinstance(am_open, AlertmanagerSettings)
    assert am_open.token is None  # the token is optional
    assert (am_open.hold, am_open.name) == (24 * HOUR, "am_open")

    pagers = build_pagers(config, FULL_ENV)
    try:
        assert {name: type(p) for name, p in pagers.items()} == {
            "relay": WebhookPager,
            "chat": SlackPager,
            "oncall": PagerDutyPager,
            "am": AlertmanagerPager,
            "am_open": AlertmanagerPager,
        }
        assert {name: p.name for name, p in pagers.items()} == {n: n for n in pagers}
    finally:
        close(pagers)

    inbound = inbound_secrets(config, FULL_ENV)
    assert inbound.max_age == 120.0
    assert inbound.pagerduty == "test-pd-file-secret"
    assert inbound.slack == FULL_ENV["T_SLACK_SIGNING"]
    assert "test-" not in repr(inbound)  # secrets stay out of logs and tracebacks


def test_the_pagerduty_default_is_the_events_v2_endpoint() -> None:
    assert PAGERDUTY_EVENTS_URL == EVENTS_URL


def test_no_paging_sections_means_nothing_is_paged(tmp_path: Path) -> None:
    config = load_config(with_paging(tmp_path, ""), environ={})
    assert config.escalation == EscalationPolicy()
    assert config.escalation.levels == ()
    assert config.notice_pagers == ()
    assert config.policy.veto_window == 0.0
    assert build_pagers(config, {}) == {}
    assert inbound_secrets(config, {}) == InboundSecrets(None, None, 300.0)


def test_pagers_without_escalation_page_one_on_call_level_at_once(tmp_path: Path) -> None:
    paging = (
        '[pagers.b]\ntype = "slack"\nwebhook_url_env = "S"\n'
        '[pagers.a]\ntype = "alertmanager"\nurl = "http://127.0.0.1:9093"\n'
    )
    config = load_config(with_paging(tmp_path, paging), environ={})
    assert config.escalation.levels == (EscalationLevel("on-call", (), ("b", "a"), 0.0),)
    assert config.escalation.renotify_every == 15 * MINUTE
    assert config.escalation.ack_timeout == 0.0


# ------------------------------------------------------------------------------------------------
# the shipped table
# ------------------------------------------------------------------------------------------------


def test_the_shipped_table_validates_without_the_secrets() -> None:
    config = load_config(SHIPPED, environ={})
    levels = config.escalation.levels
    # runbook "Emergency Contacts > Escalation Path"
    assert [(level.name, level.after) for level in levels] == [
        ("development_team", 0.0),
        ("lead_developer", 30 * MINUTE),
        ("project_manager", HOUR),
        ("executive_sponsor", 2 * HOUR),
    ]
    assert [level.contacts for level in levels] == [
        ("Development Team",),
        ("Lead Developer",),
        ("Project Manager",),
        ("Executive Sponsor",),
    ]
    assert config.notice_pagers == ("team_slack", "contacts_relay")
    assert config.escalation.renotify_every == 15 * MINUTE
    assert config.policy.veto_window == 0.0


def test_the_shipped_table_builds_its_pagers_with_the_variables_set() -> None:
    config = load_config(SHIPPED, environ={})
    pagers = build_pagers(config, SHIPPED_ENV)
    try:
        assert {name: type(p) for name, p in pagers.items()} == {
            "dev_oncall": PagerDutyPager,
            "team_slack": SlackPager,
            "contacts_relay": WebhookPager,
            "alertmanager": AlertmanagerPager,
        }
    finally:
        close(pagers)
    settings = pager_settings(config, SHIPPED_ENV)["alertmanager"]
    assert isinstance(settings, AlertmanagerSettings)
    assert settings.url == "http://127.0.0.1:9093"
    assert set(config.escalation.pagers) == set(pagers)
    inbound = inbound_secrets(config, SHIPPED_ENV)
    assert inbound.max_age == 300.0
    assert inbound.pagerduty == SHIPPED_ENV["SPEK_PAGERDUTY_WEBHOOK_SECRET"]


def test_the_shipped_table_without_the_variables_names_each_one_and_no_value() -> None:
    config = load_config(SHIPPED, environ={})
    environ = dict(SHIPPED_ENV)
    del environ["SPEK_PAGERDUTY_ROUTING_KEY"]
    del environ["SPEK_WEBHOOK_SECRET"]
    with pytest.raises(ConfigError) as caught:
        build_pagers(config, environ)
    message = str(caught.value)
    assert [(p.source, p.path) for p in caught.value.problems] == [
        ("SPEK_PAGERDUTY_ROUTING_KEY", "pagers.dev_oncall.routing_key_env"),
        ("SPEK_WEBHOOK_SECRET", "pagers.contacts_relay.secret_env"),
    ]
    assert "environment variable is not set" in message
    for value in SHIPPED_ENV.values():
        assert value not in message


# ------------------------------------------------------------------------------------------------
# bad tables: each problem names the file, the key path and the reason
# ------------------------------------------------------------------------------------------------

SLACK = '[pagers.chat]\ntype = "slack"\nwebhook_url_env = "S"\n'
PD = '[pagers.pd]\ntype = "pagerduty"\nrouting_key_env = "PD"\n'


def levels(*rows: str) -> str:
    return "".join(f"[[escalation.levels]]\n{row}\n" for row in rows)


BAD: dict[str, tuple[str, str, str]] = {
    "unknown pager type": (
        '[pagers.x]\ntype = "sms"\nurl = "http://x"\n',
        "pagers.x",
        "unknown type 'sms'; expected one of 'webhook', 'slack', 'pagerduty', 'alertmanager'",
    ),
    "no pager type": ('[pagers.x]\nurl = "http://x"\n', "pagers.x", "missing 'type'"),
    "secret env and file": (
        '[pagers.hook]\ntype = "webhook"\nurl = "https://h.test/p"\n'
        'secret_env = "W"\nsecret_file = "/run/secrets/w"\n',
        "pagers.hook",
        "set only one of secret_env or secret_file, not both",
    ),
    "no secret": (
        '[pagers.pd]\ntype = "pagerduty"\n',
        "pagers.pd",
        "set exactly one of routing_key_env or routing_key_file",
    ),
    "token env and file": (
        '[pagers.am]\ntype = "alertmanager"\nurl = "http://127.0.0.1:9093"\n'
        'token_env = "T"\ntoken_file = "/t"\n',
        "pagers.am",
        "set only one of token_env or token_file, not both",
    ),
    "unknown key": (
        SLACK.replace("webhook_url_env", "webhook_url"),
        "pagers.chat.webhook_url",
        "unknown key",
    ),
    "unknown pager in escalation": (
        SLACK
        + PD
        + levels(
            'name = "one"\npagers = ["chat"]', 'name = "two"\npagers = ["pd", "sms"]\nafter = "5m"'
        ),
        "escalation.levels[1].pagers[1]",
        "unknown pager 'sms'; defined: chat, pd",
    ),
    "non-increasing afters": (
        SLACK
        + levels(
            'name = "one"\npagers = ["chat"]',
            'name = "two"\npagers = ["chat"]\nafter = "30m"',
            'name = "three"\npagers = ["chat"]\nafter = "30m"',
        ),
        "escalation.levels[2].after",
        "must be later than escalation.levels[1].after (30m)",
    ),
    "first after not 0": (
        SLACK + levels('name = "one"\npagers = ["chat"]\nafter = "5m"'),
        "escalation.levels[0].after",
        "the first level is paged at once: 'after' must be \"0s\"",
    ),
    "level without pagers": (
        SLACK + levels('name = "one"\npagers = []'),
        "escalation.levels[0].pagers",
        "must not be empty",
    ),
    "after without a unit": (
        SLACK + levels('name = "one"\npagers = ["chat"]\nafter = 0'),
        "escalation.levels[0].after",
        "has no unit",
    ),
    "unknown pager in notices": (
        SLACK + '[notices]\npagers = ["chat", "mail"]\n',
        "notices.pagers[1]",
        "unknown pager 'mail'; defined: chat",
    ),
    "inbound both sources": (
        '[inbound]\nslack_signing_secret_env = "A"\nslack_signing_secret_file = "/a"\n',
        "inbound",
        "set only one of slack_signing_secret_env or slack_signing_secret_file",
    ),
    "negative veto window": ("", "sentinel.veto_window", "is negative"),
}


@pytest.mark.parametrize(("paging", "key", "reason"), BAD.values(), ids=BAD.keys())
def test_a_bad_paging_table_names_file_key_and_reason(
    tmp_path: Path, paging: str, key: str, reason: str
) -> None:
    sentinel = 'veto_window = "-5s"' if key == "sentinel.veto_window" else ""
    path = with_paging(tmp_path, paging, sentinel=sentinel)
    message = load_error(path)
    assert f"{path}: {key}: " in message
    assert reason in message


def test_a_secret_pasted_into_an_env_key_is_not_echoed(tmp_path: Path) -> None:
    pasted = "https://hooks.slack.com/services/TP/BP/pasted-token"
    path = with_paging(tmp_path, f'[pagers.chat]\ntype = "slack"\nwebhook_url_env = "{pasted}"\n')
    message = load_error(path)
    assert f"{path}: pagers.chat: webhook_url_env: give the name of an environment" in message
    assert "pasted-token" not in message


def test_an_override_that_breaks_the_order_names_the_variable() -> None:
    variable = "SPEK_SENTINEL_ESCALATION__LEVELS__PROJECT_MANAGER__AFTER"
    message = load_error(SHIPPED, {variable: "20m"})
    assert f"{SHIPPED} (overridden by {variable}): escalation.levels[2].after: " in message
    assert "must be later than escalation.levels[1].after (30m)" in message


# ------------------------------------------------------------------------------------------------
# secrets that cannot be read when the pagers are built
# ------------------------------------------------------------------------------------------------


def test_a_missing_secret_file_names_the_file_and_key(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    paging = (
        f'[pagers.hook]\ntype = "webhook"\nurl = "https://h.test/p"\nsecret_file = "{missing}"\n'
    )
    config = load_config(with_paging(tmp_path, paging), environ={})
    with pytest.raises(ConfigError) as caught:
        build_pagers(config, {})
    assert str(caught.value) == f"{missing}: pagers.hook.secret_file: file not found"


def test_an_empty_variable_is_refused(tmp_path: Path) -> None:
    config = load_config(with_paging(tmp_path, PD), environ={})
    with pytest.raises(ConfigError) as caught:
        build_pagers(config, {"PD": "  "})
    assert str(caught.value) == "PD: pagers.pd.routing_key_env: environment variable is empty"


def test_a_slack_url_that_is_not_a_url_is_refused_without_showing_it(tmp_path: Path) -> None:
    config = load_config(with_paging(tmp_path, SLACK), environ={})
    with pytest.raises(ConfigError) as caught:
        build_pagers(config, {"S": "xoxb-not-a-url-token"})
    message = str(caught.value)
    assert message.startswith("S: pagers.chat.webhook_url_env: is not an http(s) URL")
    assert "xoxb" not in message


def test_a_missing_inbound_secret_names_the_variable(tmp_path: Path) -> None:
    config = load_config(
        with_paging(tmp_path, '[inbound]\npagerduty_secret_env = "PD_IN"\n'), environ={}
    )
    with pytest.raises(ConfigError) as caught:
        inbound_secrets(config, {})
    assert str(caught.value) == (
        "PD_IN: inbound.pagerduty_secret_env: environment variable is not set"
    )


# ------------------------------------------------------------------------------------------------
# the pure values hold their own invariants
# ------------------------------------------------------------------------------------------------


def test_an_escalation_policy_refuses_levels_out_of_order() -> None:
    first = EscalationLevel("one", (), ("a",), 0.0)
    with pytest.raises(ValueError, match="at once"):
        EscalationPolicy(levels=(EscalationLevel("late", (), ("a",), 60.0),))
    with pytest.raises(ValueError, match="must come after"):
        EscalationPolicy(levels=(first, EscalationLevel("same", (), ("b",), 0.0)))
    policy = EscalationPolicy(levels=(first, EscalationLevel("two", (), ("b", "a"), 60.0)))
    assert policy.pagers == ("a", "b")
    assert policy.reached(59.0) == (first,)
