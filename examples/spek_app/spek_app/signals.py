"""Signals the app pushes to spek-sentinel's API (``POST /api/v1/signals``, bearer token), when
``--signal-url`` / ``SPEK_APP_SIGNAL_URL`` names it: ``security_breach`` when a protected route
was served without credentials, ``migration_failed`` when ``migrate up`` fails at start. A push
that fails is logged and dropped: the app never stops for its monitor."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request

log = logging.getLogger("spek_app.signals")

TIMEOUT = 5.0


class SignalPusher:
    def __init__(
        self, url: str | None, token: str | None, by: str, min_interval: float = 10.0
    ) -> None:
        self.url = url.rstrip("/") + "/api/v1/signals" if url else None
        self.token = token
        self.by = by
        self.min_interval = min_interval  # per signal name: one push, not one per request
        self._last: dict[str, float] = {}

    def push(self, name: str, reason: str) -> bool:
        """Blocking; True when the sentinel accepted it. Skipped (False) when no URL is set or
        the same signal went out less than ``min_interval`` seconds ago."""
        if self.url is None:
            return False
        now = time.monotonic()
        if now - self._last.get(name, -self.min_interval) < self.min_interval:
            return False
        self._last[name] = now
        body = json.dumps({"name": name, "value": 1, "reason": reason, "by": self.by}).encode()
        request = urllib.request.Request(  # noqa: S310 - the operator's own sentinel URL
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310
                accepted = 200 <= int(answer.status) < 300
        except (urllib.error.URLError, OSError) as exc:
            log.warning("pushing signal %s to %s failed: %s", name, self.url, exc)
            return False
        log.info("pushed signal %s to %s", name, self.url)
        return accepted
