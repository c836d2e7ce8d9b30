"""Where the app's settings come from: command-line options, then the env file named by
``--env-file`` / ``SPEK_APP_ENV_FILE`` (the file spek-sentinel rotates ``SESSION_SECRET`` and
``JWT_SECRET`` in), then the process environment. The file wins over the environment, so a
container restarted after a rotation runs with the new secrets whatever its ``-e`` said."""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from spek_app.releases import Release

log = logging.getLogger("spek_app.settings")

_LINE = re.compile(r"^\s*(?:export\s+)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>.*?)\s*$")


class SettingsError(ValueError):
    pass


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (``export`` and matching quotes allowed; ``#`` comments)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read env file {path}: {exc.strerror or exc}") from None
    values = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise SettingsError(f"{path}: not KEY=value: {line[:60]!r}")
        value = match["value"]
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[match["key"]] = value
    return values


def environment(env_file: str | None, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The process environment with the env file's values over it."""
    merged = dict(environ)
    path = env_file or environ.get("SPEK_APP_ENV_FILE")
    if path:
        merged.update(read_env_file(Path(path)))
    return merged


ERROR_RATIO = 0.3
SLOW_SECONDS = 0.3
LEAK_BYTES_PER_SECOND = 1024 * 1024
LEAK_MAX_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FaultSettings:
    """How big a release's fault is. Read from SPEK_APP_* variables; they only size a fault
    the version selects (see releases.py)."""

    error_ratio: float = ERROR_RATIO  # share of API requests answering 500 (v2.0.0-errors)
    slow_seconds: float = SLOW_SECONDS  # extra delay of each API response (v2.0.0-slow)
    leak_bytes_per_second: int = LEAK_BYTES_PER_SECOND  # retained per second (v2.0.0-leak)
    leak_max_bytes: int = LEAK_MAX_BYTES  # where the leak stops, to spare the machine

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FaultSettings:
        try:
            return cls(
                error_ratio=float(env.get("SPEK_APP_ERROR_RATIO", ERROR_RATIO)),
                slow_seconds=float(env.get("SPEK_APP_SLOW_SECONDS", SLOW_SECONDS)),
                leak_bytes_per_second=int(
                    env.get("SPEK_APP_LEAK_BYTES_PER_SECOND", LEAK_BYTES_PER_SECOND)
                ),
                leak_max_bytes=int(env.get("SPEK_APP_LEAK_MAX_BYTES", LEAK_MAX_BYTES)),
            )
        except ValueError as exc:
            raise SettingsError(f"a SPEK_APP_* fault setting is not a number: {exc}") from None


@dataclass(frozen=True, slots=True)
class Settings:
    release: Release
    host: str
    port: int
    dsn: str
    redis_url: str
    redis_prefix: str
    session_secret: str
    jwt_secret: str
    agent_interval: float  # seconds between synthetic agent tasks; 0 turns the loop off
    migrate: bool  # run `migrate up` to the release's schema before serving
    signal_url: str | None  # spek-sentinel's API, for pushed signals (breach, failed migration)
    signal_token: str | None
    faults: FaultSettings


def secret(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if value:
        return value
    log.warning("%s is not set: using a random one for this process only", name)
    return secrets.token_urlsafe(32)


def required(env: Mapping[str, str], option: str, *names: str) -> str:
    for name in names:
        if env.get(name):
            return env[name]
    raise SettingsError(f"give {option} or set {' or '.join(names)}")
