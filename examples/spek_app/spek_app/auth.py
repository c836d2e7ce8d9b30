"""Bearer tokens for the admin routes: HS256 JWTs signed with ``JWT_SECRET``. Rotating the
secret (runbook scenario 5) makes every token issued before it worthless."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

_HEADER = {"alg": "HS256", "typ": "JWT"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(secret: str, subject: str, role: str, ttl: float = 3600.0) -> str:
    payload = {"sub": subject, "role": role, "exp": int(time.time() + ttl)}
    signing = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(signature)}"


def verify(secret: str, token: str) -> dict[str, Any] | None:
    """The token's claims when its signature is good and it has not expired; else None."""
    try:
        header, payload, signature = token.split(".")
        expected = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
        if not hmac.compare_digest(expected.digest(), _unb64(signature)):
            return None
        if json.loads(_unb64(header)).get("alg") != "HS256":
            return None
        claims = json.loads(_unb64(payload))
    except (ValueError, TypeError):
        return None
    if not isinstance(claims, dict) or float(claims.get("exp", 0)) < time.time():
        return None
    return claims


def bearer(headers: dict[str, str]) -> str:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def fingerprint(secret: str) -> str:
    """A short, non-reversible name for a secret: tells rotated from not without showing it."""
    return hashlib.sha256(f"spek-app fingerprint {secret}".encode()).hexdigest()[:12]
