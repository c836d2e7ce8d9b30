"""Console sessions: log in once with the API token, then carry a signed cookie.

The cookie holds a session id, the name the person gave and its expiry, signed with HMAC-SHA256
under a key derived from the API token (so rotating the token ends every session). It is
HttpOnly and SameSite=Strict, scoped to ``/console``, and Secure when the console is reached
over HTTPS. Every state-changing request also needs the session's CSRF token (an HMAC of the
session id, sent in a hidden field or the ``X-CSRF-Token`` header) and an ``Origin`` (or, when
a browser sends none, ``Referer``) naming this very host. Every comparison is constant time.
Neither the token nor anything derived from it but the per-session CSRF token reaches a page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

COOKIE = "spek_console"
COOKIE_PATH = "/console"
SESSION_TTL = 12 * 3600.0  # a night on call
MAX_NAME = 200
_KEY_LABEL = b"spek-sentinel console session key v1"
_CSRF_LABEL = b"csrf:"
_MAX_COOKIE = 2048
_MAX_REVOKED = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    name: str  # who answers: recorded as ``by`` on every answer given in this session
    issued_at: float
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionKeys:
    """Issues and checks sessions and CSRF tokens; ``token`` None: nobody can log in."""

    def __init__(self, token: str | None, ttl: float = SESSION_TTL) -> None:
        self.configured = token is not None
        self._token_digest = hashlib.sha256(token.encode()).digest() if token else None
        self._key = hmac.new(token.encode(), _KEY_LABEL, hashlib.sha256).digest() if token else b""
        self.ttl = ttl
        self._revoked: dict[str, float] = {}  # sid -> its expiry; logged out in this process

    def token_matches(self, presented: str) -> bool:
        """Constant time, and blind to the length of either (both are hashed first)."""
        if self._token_digest is None:
            return False
        digest = hashlib.sha256(presented.encode()).digest()
        return hmac.compare_digest(digest, self._token_digest)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, name: str, now: float) -> tuple[Session, str]:
        """A new session for ``name`` and the cookie value that carries it."""
        if not self.configured:
            raise RuntimeError("no API token configured: no console session can be issued")
        session = Session(secrets.token_urlsafe(18), name, now, now + self.ttl)
        body = {"sid": session.sid, "name": name, "iat": now, "exp": session.expires_at}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return session, f"{payload}.{self._sign(payload)}"

    def read(self, cookie: str | None, now: float) -> Session | None:
        """The session a cookie carries, or None: missing, forged, expired or logged out."""
        if not self.configured or not cookie or len(cookie) > _MAX_COOKIE:
            return None
        payload, dot, signature = cookie.partition(".")
        if not dot or not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        try:
            body = json.loads(_unb64(payload))
            session = Session(
                str(body["sid"]), str(body["name"]), float(body["iat"]), float(body["exp"])
            )
        except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
            return None
        if session.expires_at <= now or session.sid in self._revoked:
            return None
        return session

    def revoke(self, session: Session, now: float) -> None:
        """Log out: this process refuses the cookie from now on (a restart forgets it; the
        browser has dropped it by then, and it expires anyway)."""
        self._revoked = {sid: exp for sid, exp in self._revoked.items() if exp > now}
        if len(self._revoked) < _MAX_REVOKED:
            self._revoked[session.sid] = session.expires_at

    def csrf_token(self, session: Session) -> str:
        return _b64(
            hmac.new(self._key, _CSRF_LABEL + session.sid.encode(), hashlib.sha256).digest()
        )

    def csrf_ok(self, session: Session, presented: str | None) -> bool:
        if not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.csrf_token(session).encode())


def same_origin(headers: Mapping[str, str]) -> bool:
    """True when the request says it comes from a page of this very host: its ``Origin`` (or,
    only when there is none, its ``Referer``) has this request's ``Host``. A request that says
    neither is refused: browsers send ``Origin`` with every POST."""
    host = headers.get("host", "")
    claimed = headers.get("origin") or headers.get("referer") or ""
    if not host or not claimed or claimed == "null":
        return False
    parts = urlsplit(claimed)
    if parts.scheme not in ("http", "https"):
        return False
    return hmac.compare_digest(parts.netloc.lower().encode(), host.lower().encode())
