"""Read a secret (DSN, URL, token) from the environment variable or file the config names.
Secrets never live in thresholds.toml, and no error here ever shows the value itself.

A section names the source with ``<field>_env`` or ``<field>_file`` (``dsn_env``,
``url_file``, ``token_env``...). Problems are ConfigErrors at start-up, so they are reported
before anything runs instead of a probe failing at 3 a.m.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from spek_sentinel.domain.errors import ConfigError, ConfigProblem


@dataclasses.dataclass(frozen=True, slots=True)
class Secret:
    """A secret's value and where it came from, to name in any later complaint about it."""

    value: str = dataclasses.field(repr=False)
    source: str  # the environment variable's name, or the file's path
    key: str  # the config key that named the source, such as ``probes.database.dsn_env``

    def problem(self, reason: str) -> ConfigError:
        """A ConfigError about this secret; ``reason`` must not contain the value."""
        return ConfigError([ConfigProblem(self.source, self.key, reason)])


def read_secret(
    section: str,
    environ: Mapping[str, str],
    *,
    field: str,
    env: str | None,
    file: str | None,
) -> Secret:
    """The secret named by ``<field>_env`` (a variable in ``environ``) or ``<field>_file``.

    Surrounding whitespace is stripped: secret files usually end with a newline.
    """
    if (env is None) == (file is None):
        # the config models refuse this already; the registry names the config file for it
        raise ValueError(f"set exactly one of {field}_env or {field}_file")
    if env is not None:
        key = f"{section}.{field}_env"
        raw = environ.get(env)
        if raw is None:
            raise ConfigError([ConfigProblem(env, key, "environment variable is not set")])
        if not raw.strip():
            raise ConfigError([ConfigProblem(env, key, "environment variable is empty")])
        return Secret(raw.strip(), env, key)
    assert file is not None
    key = f"{section}.{field}_file"
    try:
        raw = Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(file, key, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        # only the reason: never anything read from the file
        reason = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else "not UTF-8"
        raise ConfigError([ConfigProblem(file, key, f"cannot read: {reason}")]) from None
    if not raw.strip():
        raise ConfigError([ConfigProblem(file, key, "file is empty")])
    return Secret(raw.strip(), file, key)


# the lookbehind anchors the scheme at its start: without it a long run of letters costs
# quadratic time (100 KB of command output took 38 s)
_URL_PASSWORD = re.compile(
    r"(?<![a-z0-9+.-])(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@/\s]+@", re.IGNORECASE
)
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove passwords from URLs/DSNs and any listed secret from ``text``."""
    text = _URL_PASSWORD.sub(r"\g<head>***@", text)
    text = _KEYWORD_PASSWORD.sub(r"\g<head>***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
