"""What the network probes share: TLS trust and headers whose values come from the environment."""

from __future__ import annotations

import ssl
from collections.abc import Mapping

from spek_sentinel.domain.errors import ConfigError, ConfigProblem


def ca_context(ca_file: str | None) -> ssl.SSLContext:
    """The system trust store, or the configured CA file; ValueError when that file is bad."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"tls_ca_file {ca_file}: cannot load: {reason}") from None


def unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def env_headers(
    name: str, headers_env: Mapping[str, str], environ: Mapping[str, str]
) -> dict[str, str]:
    """Header values from the environment variables the config names; never echoed."""
    headers = {header: environ.get(env, "").strip() for header, env in headers_env.items()}
    problems = [
        ConfigProblem(env, f"probes.{name}.headers_env.{header}", reason)
        for header, env in headers_env.items()
        for reason in _header_problems(headers[header])
    ]
    if problems:
        raise ConfigError(problems)
    return headers


def _header_problems(value: str) -> list[str]:
    if not value:
        return ["environment variable is not set or empty"]
    if "\r" in value or "\n" in value:
        return ["the value holds a line break"]
    return []
