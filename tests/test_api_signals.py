"""POST /api/v1/signals over real HTTP: authenticated, JSON errors, nothing changed when refused."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from harness.asgi_server import serving
from spek_sentinel.config import Config, load_config
from spek_sentinel.domain.errors import ConfigError
from spek_sentinel.service.api import api_token, create_app
from spek_sentinel.store.sqlite import SqliteStore

TOKEN = "t0ken-for-tests-7d1c"  # noqa: S105 -- a test value
TABLE = """
[sentinel]
state_dir = "{state}"

[api]
token_env = "SPEK_TEST_API_TOKEN"

[probes.confirmed]
kind = "pushed"
signals.data_corruption = {{ unit = "count", measure = "event" }}
signals.render_fps = {{ unit = "fps", measure = "value" }}

[[rules]]
name = "low_render_fps"
signal = "render_fps"
kind = "threshold"
severity = "evaluate"
below = 30
"""


@dataclass
class Api:
    url: str
    config: Config
    state: Path

    def post(self, body: object, token: str | None = TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.post(f"{self.url}/api/v1/signals", json=body, headers=headers, timeout=10)

    def stored(self) -> dict[str, float]:
        store = SqliteStore.in_dir(self.state)
        try:
            current = store.current(["data_corruption", "render_fps"])
            return {name: signal.value for name, signal in current.items()}
        finally:
            store.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    path = tmp_path / "thresholds.toml"
    path.write_text(TABLE.format(state=tmp_path / "state"), encoding="utf-8")
    config = load_config(path, environ={})
    store = SqliteStore.in_dir(tmp_path / "state")
    token = api_token(config, {"SPEK_TEST_API_TOKEN": TOKEN})
    try:
        with serving(create_app(config, store, token)) as url:
            yield Api(url, config, tmp_path / "state")
    finally:
        store.close()


def test_a_confirmed_event_is_stored_and_survives_a_restart(api: Api) -> None:
    response = api.post(
        {"name": "data_corruption", "reason": "DBA found orphaned tasks", "by": "dba"}
    )
    assert response.status_code == 201
    body = response.json()
    assert (body["name"], body["value"], body["by"]) == ("data_corruption", 1.0, "dba")
    assert api.stored() == {"data_corruption": 1.0}  # a fresh store: what a restart reads
    listed = httpx.get(f"{api.url}/api/v1/signals", timeout=10).json()["signals"]
    assert [(s["name"], s["reason"]) for s in listed] == [
        ("data_corruption", "DBA found orphaned tasks")
    ]


def test_a_resolve_closes_the_open_event(api: Api) -> None:
    api.post({"name": "data_corruption", "reason": "found"})
    response = api.post({"name": "data_corruption", "reason": "false alarm", "resolve": True})
    assert (response.status_code, response.json()["resolved"]) == (201, 1)
    assert api.stored() == {}


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x", TOKEN[:-1]])
def test_a_missing_or_wrong_token_is_401_and_changes_nothing(api: Api, token: str | None) -> None:
    response = api.post({"name": "data_corruption", "reason": "x"}, token=token)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "error" in response.json()
    assert api.stored() == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "error_rate", "value": 1, "reason": "x"}, "not a pushed signal"),
        ({"name": "render_fps", "reason": "x"}, "is a reported value: give a value"),
        ({"name": "render_fps", "value": "low", "reason": "x"}, "'value' must be a number"),
        ({"name": "render_fps", "value": 20}, "'reason' are required"),
        ({"name": "render_fps", "value": 20, "reason": " "}, "a reason is required"),
        ({"name": "render_fps", "value": 20, "reason": "x", "colour": 1}, "unknown fields"),
        (["render_fps"], "expected a JSON object"),
    ],
)
def test_bad_input_is_400_with_a_json_reason_and_changes_nothing(
    api: Api, body: object, message: str
) -> None:
    response = api.post(body)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert api.stored() == {}


def test_malformed_json_is_400(api: Api) -> None:
    response = httpx.post(
        f"{api.url}/api/v1/signals",
        content=b"{not json",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith("malformed JSON")


def test_unknown_routes_answer_json(api: Api) -> None:
    response = httpx.get(f"{api.url}/api/v1/nothing-here", timeout=10)
    assert response.status_code == 404
    assert "error" in response.json()


def test_without_a_configured_token_mutations_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.toml"
    text = TABLE.format(state=tmp_path / "state").replace(
        '[api]\ntoken_env = "SPEK_TEST_API_TOKEN"\n', ""
    )
    path.write_text(text, encoding="utf-8")
    config = load_config(path, environ={})
    assert api_token(config, {}) is None
    store = SqliteStore.in_dir(tmp_path / "state")
    try:
        with serving(create_app(config, store, None)) as url:
            response = httpx.post(
                f"{url}/api/v1/signals",
                json={"name": "data_corruption", "reason": "x"},
                headers={"Authorization": "Bearer anything"},
                timeout=10,
            )
        assert response.status_code == 401
        assert "no API token configured" in response.json()["error"]
    finally:
        store.close()


def test_a_named_token_variable_that_is_not_set_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.toml"
    path.write_text(TABLE.format(state=tmp_path / "state"), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        api_token(load_config(path, environ={}), {})
    assert (
        str(caught.value) == "SPEK_TEST_API_TOKEN: api.token_env: environment variable is not set"
    )
