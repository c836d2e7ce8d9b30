"""The on-call console's routes, mounted in the daemon's HTTP app under ``/console``.

    GET  /console/login, POST /console/login      log in with the API token (and your name)
    POST /console/logout                          (session + CSRF)
    GET  /console/{now,alerts,incidents,releases} the views; /console/incidents/{id} one incident
    GET  /console/incidents/{id}/report.md        its Markdown report
    GET  /console/live/...                        each view as JSON, for the page's poller
    POST /console/alerts/{id}/answer              acknowledge / rollback / dismiss (session + CSRF)
    GET  /console/static/{console.css,console.js}

Without a valid session a page redirects to the login page, its JSON twin answers 401, and an
action is refused with 401; a POST without this host as its Origin, or without the session's
CSRF token, is refused with 403. A refused request changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from spek_sentinel.console import views
from spek_sentinel.console.history import SignalHistory
from spek_sentinel.console.pages import (
    STATIC,
    login_page,
    message_page,
    nav_counts,
    shell,
    static_file,
)
from spek_sentinel.console.session import (
    COOKIE,
    COOKIE_PATH,
    MAX_NAME,
    Session,
    SessionKeys,
    same_origin,
)
from spek_sentinel.console.text import Escaper
from spek_sentinel.domain.alerts import AlertError, Answer
from spek_sentinel.domain.units import iso
from spek_sentinel.rollback.journal import Journal
from spek_sentinel.service.rollback_run import incident_report
from spek_sentinel.service.watch import Watch
from spek_sentinel.store.open import state_location
from spek_sentinel.store.records import StateStore

log = logging.getLogger(__name__)

MAX_FORM = 16 * 1024
MAX_NOTE = 2000
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class Rendered:
    title: str
    main: str
    status: int = 200


class FormError(Exception):
    pass


def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _html(body: str, status: int = 200) -> Response:
    return _secure(HTMLResponse(body, status_code=status))


def _safe_next(path: str) -> str:
    """Only a console path of this site: never another host, scheme or ``//host``."""
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or not path.startswith("/console/"):
        return "/console/now"
    if "\\" in path or "//" in path or "/." in path:
        return "/console/now"
    if path.startswith("/console/login") or path.startswith("/console/live/"):
        return "/console/now"
    return path


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form (no multipart: nothing here uploads), first value of each field."""
    body = await request.body()
    if len(body) > MAX_FORM:
        raise FormError(f"form larger than {MAX_FORM} bytes")
    try:
        text = body.decode("utf-8")
        fields = parse_qs(text, keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormError(f"malformed form: {exc}") from None
    return {name: values[0] for name, values in fields.items() if values}


class ConsoleRoutes:
    """The console over one daemon generation's watch loop. ``secrets``: every secret value
    the daemon holds; any that turns up in shown text (a probe error, a step's output) is
    masked. The signal history is fed by the watch loop's samples from construction on."""

    def __init__(
        self,
        watch: Watch,
        token: str | None,
        clock: Callable[[], float] = time.time,
        *,
        secrets: Sequence[str] = (),
        history: SignalHistory | None = None,
    ) -> None:
        self.watch = watch
        self.clock = clock
        self.keys = SessionKeys(token)
        self.esc = Escaper([*secrets, *([token] if token else [])])
        self.history = history if history is not None else SignalHistory()
        watch.sample_observers.append(self.history.record)
        self.state = state_location(watch.config, watch.environ)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/console", self.root, methods=["GET"]),
            Route("/console/", self.root, methods=["GET"]),
            Route("/console/login", self.login_form, methods=["GET"]),
            Route("/console/login", self.login, methods=["POST"]),
            Route("/console/logout", self.logout, methods=["POST"]),
            Route("/console/static/{name:str}", self.static, methods=["GET"]),
            Route("/console/alerts/{alert:int}/answer", self.answer, methods=["POST"]),
            Route("/console/incidents/{incident:str}/report.md", self.report, methods=["GET"]),
            Route("/console/live/{view:path}", self.live, methods=["GET"]),
            Route("/console/{view:path}", self.page, methods=["GET"]),
        ]

    # -- sessions ------------------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        return self.keys.read(request.cookies.get(COOKIE), self.clock())

    def _to_login(self, request: Request) -> Response:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return _secure(
            RedirectResponse(f"/console/login?next={quote(_safe_next(here))}", status_code=303)
        )

    def _refuse(self, request: Request, status: int, why: str) -> Response:
        client = request.client.host if request.client else "?"
        log.warning(
            "console: %s %s refused (%s) from %s", request.method, request.url.path, why, client
        )
        if "application/json" in request.headers.get("accept", ""):
            return _secure(JSONResponse({"error": why}, status_code=status))
        return _html(message_page("Refused", why, self.esc), status)

    def _checked_post(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response | None:
        """None when a state-changing request may go ahead; else the refusal."""
        if session is None:
            return self._refuse(request, 401, "not logged in to the console")
        if not same_origin(request.headers):
            return self._refuse(request, 403, "cross-origin request (Origin is not this host)")
        presented = form.get("csrf") or request.headers.get("x-csrf-token")
        if not self.keys.csrf_ok(session, presented):
            return self._refuse(request, 403, "missing or wrong CSRF token")
        return None

    async def root(self, request: Request) -> Response:
        return _secure(RedirectResponse("/console/now", status_code=303))

    async def login_form(self, request: Request) -> Response:
        if self.session(request) is not None:
            return _secure(RedirectResponse(_safe_next(request.query_params.get("next", "")), 303))
        page = login_page(
            next_path=_safe_next(request.query_params.get("next", "")),
            message="",
            configured=self.keys.configured,
            esc=self.esc,
        )
        return _html(page)

    async def login(self, request: Request) -> Response:
        if not same_origin(request.headers):
            return self._refuse(request, 403, "cross-origin request (Origin is not this host)")
        try:
            form = await _form(request)
        except FormError as exc:
            return self._refuse(request, 400, str(exc))
        next_path = _safe_next(form.get("next", ""))
        name = " ".join(form.get("name", "").split())

        def again(status: int, message: str) -> Response:
            page = login_page(
                next_path=next_path, message=message, configured=self.keys.configured, esc=self.esc
            )
            return _html(page, status)

        if not self.keys.configured:
            return again(503, "")
        if not name or len(name) > MAX_NAME:
            return again(400, f"Give your name (at most {MAX_NAME} characters).")
        if not self.keys.token_matches(form.get("token", "")):
            client = request.client.host if request.client else "?"
            log.warning("console: login refused for %r from %s: wrong token", name, client)
            return again(401, "Wrong token.")
        session, cookie = self.keys.issue(name, self.clock())
        log.info("console: %s logged in (session %s…)", name, session.sid[:6])
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=int(self.keys.ttl),
            path=COOKIE_PATH,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return _secure(response)

    async def logout(self, request: Request) -> Response:
        session = self.session(request)
        try:
            form = await _form(request)
        except FormError as exc:
            return self._refuse(request, 400, str(exc))
        refused = self._checked_post(request, session, form)
        if refused is not None:
            return refused
        assert session is not None
        self.keys.revoke(session, self.clock())
        log.info("console: %s logged out", session.name)
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
        return _secure(response)

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        content = static_file(name)
        if content is None:
            return _secure(JSONResponse({"error": f"no console file {name}"}, status_code=404))
        response = Response(content, media_type=STATIC[name])
        response.headers["Cache-Control"] = "max-age=300"
        return _secure(response)

    # -- views ---------------------------------------------------------------------------------

    async def _render(self, view: str, request: Request, session: Session) -> Rendered:
        now = self.clock()
        esc = self.esc
        desk = self.watch.desk
        if view == "now":
            return Rendered("Now", views.now_view(self.watch, self.history, now, esc))
        if view == "alerts":
            include_resolved = request.query_params.get("all", "") in ("1", "true", "yes")
            items = views.alert_items(desk, include_resolved)
            message = ""
            answered = request.query_params.get("answered", "")
            if answered.isdigit():
                message = (
                    f"Your answer to alert #{int(answered)} is recorded; the sentinel carries "
                    "it out within seconds (see its answers below)."
                )
            main = views.alerts_view(
                desk,
                items,
                self.keys.csrf_token(session),
                now,
                esc,
                include_resolved=include_resolved,
                message=message,
            )
            return Rendered("Alerts", main)
        if view == "incidents":
            alerts = desk.store.alerts(include_resolved=True)
            rows = await asyncio.to_thread(views.incident_rows_blocking, self.state, alerts)
            return Rendered("Incidents", views.incidents_view(rows, now, esc))
        if view.startswith("incidents/") and view.count("/") == 1:
            incident = view.removeprefix("incidents/")
            alerts = desk.store.alerts(include_resolved=True)
            detail = await asyncio.to_thread(views.incident_detail_blocking, self.state, incident)
            if detail.run is None and not any(a.incident == incident for a in alerts):
                missing = f'<section class="view"><h1>No incident {esc(incident)}</h1></section>'
                return Rendered("Not found", missing, 404)
            main = views.incident_view(detail, alerts, self.watch.config, now, esc)
            return Rendered(f"Incident {incident}", main)
        if view == "releases":
            releases, target = await asyncio.to_thread(views.releases_blocking, self.state)
            known_good_after = self.watch.config.model.rollback.known_good_after
            return Rendered(
                "Releases", views.releases_view(releases, target, known_good_after, now, esc)
            )
        missing = f'<section class="view"><h1>No console page {esc(view)}</h1></section>'
        return Rendered("Not found", missing, 404)

    def _nav(self) -> str:
        open_alerts, unacknowledged = self.watch.desk.store.counts()
        return nav_counts(open_alerts, unacknowledged, self.esc)

    async def page(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return self._to_login(request)
        view = request.path_params["view"].strip("/")
        return await self._page(request, session, view)

    async def _page(
        self, request: Request, session: Session, view: str, *, error: str = "", status: int = 0
    ) -> Response:
        rendered = await self._render(view, request, session)
        main = rendered.main
        if error:
            flash = f'<div class="flash error" role="alert">{self.esc(error)}</div>'
            main = main.replace("</h1>", f"</h1>{flash}", 1)
        active = view.split("/", 1)[0]
        body = shell(
            title=rendered.title,
            active=active,
            live=f"/console/live/{view}",
            main=main,
            banner=views.banner(self.watch, self.clock(), self.esc),
            nav=self._nav(),
            who=session.name,
            csrf=self.keys.csrf_token(session),
            updated=iso(self.clock()),
            busy=views.live_state(self.watch)["rollback_running"],
            esc=self.esc,
        )
        return _html(body, status or rendered.status)

    async def live(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return _secure(JSONResponse({"error": "not logged in"}, status_code=401))
        view = request.path_params["view"].strip("/")
        rendered = await self._render(view, request, session)
        body: dict[str, object] = {
            "view": view,
            "title": rendered.title,
            "main": rendered.main,
            "banner": views.banner(self.watch, self.clock(), self.esc),
            "nav": self._nav(),
            "at": iso(self.clock()),
            **views.live_state(self.watch),
        }
        return _secure(JSONResponse(body, status_code=rendered.status))

    async def report(self, request: Request) -> Response:
        if self.session(request) is None:
            return self._to_login(request)
        incident = request.path_params["incident"]
        text = await asyncio.to_thread(self._report, incident)
        if text is None:
            return _html(
                message_page("Not found", f"no rollback report for {incident}", self.esc), 404
            )
        # text/plain, not text/markdown: a browser shows it instead of downloading it
        response = Response(self.esc.mask(text), media_type="text/plain; charset=utf-8")
        return _secure(response)

    def _report(self, incident: str) -> str | None:
        journal = Journal.open(self.state)
        store = StateStore.open(self.state)
        try:
            record = store.incident(incident)
            trigger = record.trigger if record is not None else ""
            return incident_report(self.watch.config, journal, incident, trigger)
        finally:
            journal.close()
            store.close()

    # -- actions -------------------------------------------------------------------------------

    async def answer(self, request: Request) -> Response:
        session = self.session(request)
        try:
            form = await _form(request)
        except FormError as exc:
            return self._refuse(request, 400, str(exc))
        refused = self._checked_post(request, session, form)
        if refused is not None:
            return refused
        assert session is not None
        alert_id = int(request.path_params["alert"])
        choice = form.get("answer", Answer.ACKNOWLEDGE.value)
        note = form.get("note", "")
        if choice not in {a.value for a in Answer} or len(note) > MAX_NOTE:
            return self._refuse(
                request,
                400,
                f"an answer is one of {', '.join(Answer)}; a note at most {MAX_NOTE} characters",
            )
        try:
            alert, _ = self.watch.desk.answer(
                str(alert_id),
                Answer(choice),
                by=session.name,
                note=note,
                source="console",
                now=self.clock(),
            )
        except AlertError as exc:
            log.info(
                "console: %s's answer %s to alert %d refused: %s",
                session.name,
                choice,
                alert_id,
                exc,
            )
            return await self._page(request, session, "alerts", error=str(exc), status=exc.status)
        log.info("console: %s answered %s to alert %d", session.name, choice, alert.id)
        target = f"/console/alerts?answered={alert.id}#alert-{alert.id}"
        return _secure(RedirectResponse(target, status_code=303))
