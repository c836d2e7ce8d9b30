"""The console's parts without a daemon: sessions and CSRF tokens, the origin check, the
bounded signal history, secret masking, and the SVG pictures."""

from __future__ import annotations

import base64
import json

import pytest

from spek_sentinel.console.history import Point, SignalHistory, series_key
from spek_sentinel.console.routes import _safe_next
from spek_sentinel.console.session import SessionKeys, same_origin
from spek_sentinel.console.svg import Bar, meter, sparkline, timeline
from spek_sentinel.console.text import MASK, Escaper, value_in
from spek_sentinel.domain.samples import Sample

TOKEN = "unit-test-api-token-0123456789"  # noqa: S105 -- a test value


def test_a_session_round_trips_and_any_change_to_it_is_refused() -> None:
    keys = SessionKeys(TOKEN, ttl=100)
    session, cookie = keys.issue("alice", now=1000)
    assert keys.read(cookie, now=1050) == session
    assert TOKEN not in cookie and session.name == "alice"
    assert keys.read(cookie, now=1100) is None  # expired
    payload, _, signature = cookie.partition(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["name"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    assert keys.read(f"{forged}.{signature}", now=1050) is None
    assert keys.read(f"{payload}.{signature[:-2]}AA", now=1050) is None
    assert keys.read(payload, now=1050) is None
    assert keys.read("", now=1050) is None and keys.read(None, now=1050) is None
    assert keys.read("x" * 5000, now=1050) is None
    # another token (a rotated one) means another key: every session ends
    assert SessionKeys("another-token-entirely").read(cookie, now=1050) is None
    keys.revoke(session, now=1050)
    assert keys.read(cookie, now=1050) is None


def test_the_token_check_and_csrf_tokens() -> None:
    keys = SessionKeys(TOKEN)
    assert keys.token_matches(TOKEN)
    assert not keys.token_matches(TOKEN[:-1]) and not keys.token_matches("")
    alice, _ = keys.issue("alice", now=0)
    bob, _ = keys.issue("bob", now=0)
    assert keys.csrf_ok(alice, keys.csrf_token(alice))
    assert not keys.csrf_ok(alice, keys.csrf_token(bob))
    assert not keys.csrf_ok(alice, None) and not keys.csrf_ok(alice, "")
    assert TOKEN not in keys.csrf_token(alice)
    nobody = SessionKeys(None)
    assert not nobody.configured and not nobody.token_matches("")
    with pytest.raises(RuntimeError):
        nobody.issue("alice", now=0)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"host": "127.0.0.1:9102", "origin": "http://127.0.0.1:9102"}, True),
        ({"host": "sentinel.example", "origin": "https://sentinel.example"}, True),
        ({"host": "127.0.0.1:9102", "referer": "http://127.0.0.1:9102/console/alerts"}, True),
        ({"host": "127.0.0.1:9102", "origin": "http://evil.example"}, False),
        ({"host": "127.0.0.1:9102", "origin": "http://127.0.0.1:9103"}, False),
        ({"host": "127.0.0.1:9102", "origin": "null"}, False),
        ({"host": "127.0.0.1:9102", "origin": "file://127.0.0.1:9102"}, False),
        ({"host": "127.0.0.1:9102"}, False),
        ({"origin": "http://127.0.0.1:9102"}, False),
        # Origin wins over Referer: a page elsewhere cannot borrow our Referer
        (
            {
                "host": "127.0.0.1:9102",
                "origin": "http://evil.example",
                "referer": "http://127.0.0.1:9102/console/now",
            },
            False,
        ),
    ],
)
def test_same_origin(headers: dict[str, str], expected: bool) -> None:
    assert same_origin(headers) is expected


def test_the_history_is_bounded_and_keeps_one_point_per_slot() -> None:
    history = SignalHistory(window=100, max_points=10, max_signals=2)  # a slot is 10 s
    history.record([Sample("fps", at, float(at)) for at in range(0, 300, 2)])
    points = history.points("fps", now=298)
    assert len(points) == 10  # the last 100 s, one per 10 s slot, the latest of each
    assert [p.at for p in points] == [208, 218, 228, 238, 248, 258, 268, 278, 288, 298]
    history.record([Sample("fps", 100, 1.0)])  # out of order: ignored
    assert history.points("fps", now=298)[-1].at == 298
    history.record([Sample("cpu", 10, error="connection refused")])
    assert history.points("cpu", now=10) == [Point(10, None)]
    error = history.last_error("cpu")
    assert error is not None and error.error == "connection refused"
    history.record([Sample("cpu", 20, 0.5)])
    assert history.last_error("cpu") is None
    history.record([Sample("mem", 20, 1.0)])  # a third signal: the stalest goes
    assert history.signals() == ["cpu", "mem"]
    history.record([Sample("rss", 30, 5.0, series="pod-a")])
    assert series_key("rss", "pod-a") in history.signals()
    with pytest.raises(ValueError, match="window"):
        SignalHistory(window=0)


def test_secrets_are_masked_before_escaping() -> None:
    esc = Escaper(["s3cr3t-value", "s3cr3t-value-longer", "ab"])
    shown = esc("<b>postgresql://u:s3cr3t-value-longer@db</b> and s3cr3t-value")
    assert "s3cr3t" not in shown and shown.count(MASK) == 2
    assert shown.startswith("&lt;b&gt;")
    assert esc("ab cd") == "ab cd"  # too short to be a secret: not masked
    assert esc(None) == ""
    assert esc('"quoted"') == "&quot;quoted&quot;"


def test_values_read_in_their_unit() -> None:
    assert value_in("ratio", 0.0943) == "9.43%"
    assert value_in("seconds", 0.25) == "250ms"
    assert value_in("bool", 1.0) == "up" and value_in("bool", 0.0) == "down"
    assert value_in("fps", 12) == "12 fps"
    assert value_in(None, None) == "—"


def test_the_pictures_need_no_inline_style_and_escape_their_text() -> None:
    esc = Escaper()
    points = [Point(10, 50.0), Point(20, None), Point(30, 12.0), Point(40, 11.0)]
    spark = sparkline(points, 40, 60, threshold=30, breach=lambda v: v < 30, label="<fps>", esc=esc)
    assert spark.startswith("<svg") and "style=" not in spark and "&lt;fps&gt;" in spark
    assert spark.count("<polyline") == 1 and 'fill="#c0392b"' in spark
    assert "no samples yet" in sparkline([], 0, 60, esc=esc)
    chart = timeline(
        [Bar("a<b", 0, 2, "succeeded"), Bar("c", None, None, "not run")], 0, 4, esc=esc
    )
    assert "a&lt;b" in chart and "not run" in chart and "style=" not in chart
    assert "style=" not in meter(700, 300, 600, esc=esc)


@pytest.mark.parametrize(
    ("asked", "sent_to"),
    [
        ("/console/alerts?all=1", "/console/alerts?all=1"),
        ("/console/incidents/inc-1", "/console/incidents/inc-1"),
        ("", "/console/now"),
        ("https://evil.example/console/now", "/console/now"),
        ("//evil.example/console/now", "/console/now"),
        ("/console/..//evil.example", "/console/now"),
        ("/console\\..\\evil", "/console/now"),
        ("/api/v1/alerts", "/console/now"),
        ("/console/login?next=/console/now", "/console/now"),
        ("/console/live/now", "/console/now"),
    ],
)
def test_after_login_only_a_console_page_of_this_site(asked: str, sent_to: str) -> None:
    assert _safe_next(asked) == sent_to
