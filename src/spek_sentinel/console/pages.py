"""The console's page shell and login page: plain HTML, its CSS and JavaScript served by the
daemon itself (``/console/static/``), nothing from elsewhere."""

from __future__ import annotations

from importlib import resources

from spek_sentinel.console.text import Escaper

VIEWS = (("now", "Now"), ("alerts", "Alerts"), ("incidents", "Incidents"), ("releases", "Releases"))
STATIC = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}
POLL_MS = 5000


def static_file(name: str) -> bytes | None:
    """One of the console's own files, or None for any other name."""
    if name not in STATIC:
        return None
    return resources.files("spek_sentinel.console").joinpath("static", name).read_bytes()


def nav_counts(open_alerts: int, unacknowledged: int, esc: Escaper) -> str:
    if not unacknowledged:
        return f'<span class="muted small">{open_alerts} alert(s), all acknowledged</span>'
    return f'<span class="count" title="unacknowledged alerts">{esc(unacknowledged)}</span>'


def shell(
    *,
    title: str,
    active: str,
    live: str,
    main: str,
    banner: str,
    nav: str,
    who: str,
    csrf: str,
    updated: str,
    busy: bool,
    esc: Escaper,
) -> str:
    links = []
    for view, label in VIEWS:
        current = ' aria-current="page"' if view == active else ""
        extra = f' <span id="nav-counts">{nav}</span>' if view == "alerts" else ""
        links.append(f'<a href="/console/{view}"{current}>{label}{extra}</a>')
    classes = "rollback-running" if busy else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)} · spek-sentinel</title>"
        '<link rel="stylesheet" href="/console/static/console.css">'
        '<script src="/console/static/console.js" defer></script></head>'
        f'<body class="{classes}" data-live="{esc(live)}" data-poll="{POLL_MS}">'
        '<header class="top"><a class="brand" href="/console/now">spek-sentinel</a>'
        f"<nav>{''.join(links)}</nav>"
        f'<div class="who"><span>on call: <strong>{esc(who)}</strong></span>'
        '<form method="post" action="/console/logout">'
        f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
        '<button type="submit">Log out</button></form></div></header>'
        f'<div id="banner">{banner}</div><main id="main">{main}</main>'
        f'<footer><span id="updated">rendered {esc(updated)}</span> · '
        '<span id="live-status">live updates every few seconds</span></footer>'
        "</body></html>"
    )


def login_page(*, next_path: str, message: str, configured: bool, esc: Escaper) -> str:
    if not configured:
        form = (
            '<p class="error">This sentinel has no API token configured '
            "(<code>[api] token_env</code> or <code>token_file</code>), so nobody can log in "
            "to the console.</p>"
        )
    else:
        flash = f'<p class="error" role="alert">{esc(message)}</p>' if message else ""
        form = (
            f'{flash}<form method="post" action="/console/login">'
            f'<input type="hidden" name="next" value="{esc(next_path)}">'
            '<label for="name">Your name</label>'
            '<input id="name" name="name" required maxlength="200" autocomplete="username" '
            'placeholder="recorded with every answer you give">'
            '<label for="token">API token</label>'
            '<input id="token" name="token" type="password" required '
            'autocomplete="current-password" placeholder="the [api] token">'
            '<button type="submit">Log in</button></form>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        "<title>Log in · spek-sentinel</title>"
        '<link rel="stylesheet" href="/console/static/console.css"></head><body>'
        '<header class="top"><span class="brand">spek-sentinel</span></header>'
        '<main><section class="login"><h1>On-call console</h1>'
        '<p class="muted">Log in with the API token. The session lasts 12 hours in this '
        "browser; answers you give are recorded under your name.</p>"
        f"{form}</section></main></body></html>"
    )


def message_page(title: str, text: str, esc: Escaper) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)} · spek-sentinel</title>"
        '<link rel="stylesheet" href="/console/static/console.css"></head><body>'
        '<header class="top"><span class="brand">spek-sentinel</span></header>'
        f"<main><h1>{esc(title)}</h1><p>{esc(text)}</p>"
        '<p><a href="/console/login">Log in</a> · <a href="/console/now">Console</a></p>'
        "</main></body></html>"
    )
