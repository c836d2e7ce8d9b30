"""Who may use the console, over plain HTTP against ``spek-sentinel run`` on the rig: without a
session every page sends to the login page and every action is refused; a wrong token logs
nobody in; a POST without this host as its Origin or without the session's CSRF token is
refused and changes nothing; the session cookie is HttpOnly and SameSite=Strict; logging out
ends the session; no secret reaches a page or the log."""

from __future__ import annotations

import re
from typing import Any

import httpx
from console_rig import SECRETS, TOKEN, Site, site, wait_for

__all__ = ["site"]

EVIL = "http://evil.example"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def breach(site: Site) -> dict[str, Any]:
    site.push("render_fps", 9)

    def opened() -> dict[str, Any] | None:
        found = [a for a in site.alerts() if a["rules"] == ["low_render_fps"]]
        return found[0] if found else None

    alert: dict[str, Any] = wait_for(opened, message="no alert for low_render_fps")
    return alert


def test_without_a_session_pages_send_to_login_and_actions_are_refused(site: Site) -> None:
    site.start()
    alert = breach(site)
    with httpx.Client(base_url=site.url) as anonymous:
        for path in ("/console", "/console/now", "/console/alerts", "/console/incidents"):
            answer = anonymous.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/console/")
        for path in ("/console/now", "/console/releases", "/console/incidents/inc-x"):
            answer = anonymous.get(path)
            assert answer.headers["location"] == f"/console/login?next={path}"
        assert anonymous.get("/console/incidents/inc-x/report.md").status_code == 303
        assert anonymous.get("/console/live/alerts").status_code == 401
        refused = anonymous.post(
            f"/console/alerts/{alert['id']}/answer",
            data={"answer": "dismiss", "csrf": "anything"},
            headers={"Origin": site.url},
        )
        assert refused.status_code == 401
        assert anonymous.post("/console/logout", headers={"Origin": site.url}).status_code == 401

        # a forged cookie is no session
        anonymous.cookies.set("spek_console", "eyJzaWQiOiJ4In0.forged", path="/console")
        assert anonymous.get("/console/now").status_code == 303
        assert anonymous.get("/console/live/now").status_code == 401

        login = anonymous.get("/console/login")
        assert login.status_code == 200 and 'type="password"' in login.text
        assert login.headers["content-security-policy"].startswith("default-src 'none'")
        assert login.headers["x-frame-options"] == "DENY"
        assert anonymous.get("/console/static/console.js").status_code == 200
        assert anonymous.get("/console/static/routes.py").status_code == 404

        wrong = anonymous.post(
            "/console/login",
            data={"name": "mallory", "token": "a-guessed-token"},
            headers={"Origin": site.url},
        )
        assert wrong.status_code == 401 and "Wrong token" in wrong.text
        assert "set-cookie" not in wrong.headers
        for headers in ({}, {"Origin": EVIL}, {"Referer": f"{EVIL}/console/login"}):
            cross = anonymous.post(
                "/console/login", data={"name": "mallory", "token": TOKEN}, headers=headers
            )
            assert cross.status_code == 403, headers
            assert "set-cookie" not in cross.headers
    unchanged = site.alert(alert["id"])
    assert unchanged["state"] == "open" and unchanged["actions"] == []


def test_a_post_without_csrf_token_or_origin_is_refused_and_changes_nothing(site: Site) -> None:
    site.start()
    alert = breach(site)
    url = f"/console/alerts/{alert['id']}/answer"
    with httpx.Client(base_url=site.url) as alice, httpx.Client(base_url=site.url) as bob:
        answer = alice.post(
            "/console/login",
            data={"name": "alice", "token": TOKEN, "next": "/console/alerts"},
            headers={"Origin": site.url},
        )
        assert (answer.status_code, answer.headers["location"]) == (303, "/console/alerts")
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
        assert "secure" not in cookie  # plain HTTP on loopback; set when served over HTTPS
        site.login(bob, "bob")
        token = csrf_of(alice.get("/console/alerts").text)
        bobs = csrf_of(bob.get("/console/alerts").text)
        assert token != bobs  # per session

        for data, headers in (
            ({"answer": "dismiss"}, {"Origin": site.url}),  # no CSRF token
            ({"answer": "dismiss", "csrf": "x" * len(token)}, {"Origin": site.url}),
            ({"answer": "dismiss", "csrf": bobs}, {"Origin": site.url}),  # another session's
            ({"answer": "dismiss", "csrf": token}, {"Origin": EVIL}),
            ({"answer": "dismiss", "csrf": token}, {"Referer": f"{EVIL}/x"}),
            ({"answer": "dismiss", "csrf": token}, {}),  # neither Origin nor Referer
        ):
            refused = alice.post(url, data=data, headers=headers)
            assert refused.status_code == 403, (data, headers, refused.text)
        header_only = alice.post(
            url, data={"answer": "dismiss"}, headers={"Origin": EVIL, "X-CSRF-Token": token}
        )
        assert header_only.status_code == 403
        unchanged = site.alert(alert["id"])
        assert (unchanged["state"], unchanged["actions"]) == ("open", [])

        bad = alice.post(
            url, data={"answer": "explode", "csrf": token}, headers={"Origin": site.url}
        )
        assert bad.status_code == 400
        done = alice.post(
            url,
            data={"answer": "acknowledge", "note": "on it", "csrf": token},
            headers={"Origin": site.url},
        )
        assert done.status_code == 303, done.text
        assert (
            done.headers["location"]
            == f"/console/alerts?answered={alert['id']}#alert-{alert['id']}"
        )
        shown = site.alert(alert["id"])
        assert (shown["state"], shown["acked_by"], shown["ack_note"]) == (
            "acknowledged",
            "alice",
            "on it",
        )
        # header instead of the form field works too (same origin)
        again = alice.post(
            url, data={"answer": "acknowledge"}, headers={"Origin": site.url, "X-CSRF-Token": token}
        )
        assert again.status_code == 303
        # an answer the alert refuses is shown with the desk's reason, nothing recorded
        blind = wait_for(
            lambda: [a for a in site.alerts() if a["kind"] == "blind"], message="no blind alert"
        )[0]
        conflict = alice.post(
            f"/console/alerts/{blind['id']}/answer",
            data={"answer": "rollback", "csrf": token},
            headers={"Origin": site.url},
        )
        assert (
            conflict.status_code == 409 and "only &#x27;acknowledge&#x27; applies" in conflict.text
        )
        assert site.alert(blind["id"])["actions"] == []

        # logging out needs the token too, then the old cookie is refused
        old = alice.cookies.get("spek_console")
        assert alice.post("/console/logout", headers={"Origin": site.url}).status_code == 403
        out = alice.post("/console/logout", data={"csrf": token}, headers={"Origin": site.url})
        assert (out.status_code, out.headers["location"]) == (303, "/console/login")
        with httpx.Client(base_url=site.url) as replay:
            assert old is not None
            replay.cookies.set("spek_console", old, path="/console")
            assert replay.get("/console/now").status_code == 303
        assert bob.get("/console/now").status_code == 200  # bob's session goes on


def test_no_secret_reaches_a_page_or_the_log(site: Site) -> None:
    site.start()
    breach(site)
    with httpx.Client(base_url=site.url) as client:
        site.login(client)
        pages = [
            client.get(path).text
            for path in (
                "/console/now",
                "/console/alerts?all=1",
                "/console/incidents",
                "/console/releases",
                "/console/live/now",
                "/console/live/alerts",
            )
        ]
    for text in pages:
        for secret in SECRETS.values():
            assert secret not in text
        assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing from elsewhere
    log = site.daemon.log_path.read_text(encoding="utf-8")
    assert "console: alice logged in" in log
    for secret in SECRETS.values():
        assert secret not in log
