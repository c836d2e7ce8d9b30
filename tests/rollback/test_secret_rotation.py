"""Scenario 5's secret rotation on a real env file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from spek_sentinel.rollback.secret_rotation import RotationError, rotate_env_secrets

ENV = """# SPEK platform
DATABASE_URL=postgresql://spek_user@db/spek_db
SESSION_SECRET=old-session-secret
export JWT_SECRET = old-jwt-secret
REDIS_URL=redis://cache:6379
"""


def test_listed_secrets_get_fresh_values_and_nothing_else_changes(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(ENV, encoding="utf-8")
    env.chmod(0o600)

    rotated = rotate_env_secrets(env, ["SESSION_SECRET", "JWT_SECRET", "API_KEY"])

    lines = env.read_text(encoding="utf-8").splitlines()
    values = dict(line.split("=", 1) for line in lines if "=" in line)
    assert rotated == ["SESSION_SECRET", "JWT_SECRET", "API_KEY"]
    assert lines[0] == "# SPEK platform"
    assert values["DATABASE_URL"] == "postgresql://spek_user@db/spek_db"
    assert values["REDIS_URL"] == "redis://cache:6379"
    assert values["SESSION_SECRET"] not in ("old-session-secret", "")
    assert len(values["SESSION_SECRET"]) >= 40
    assert lines[3].startswith("export JWT_SECRET = ") and "old-jwt-secret" not in lines[3]
    assert values["API_KEY"] != values["SESSION_SECRET"]  # appended, and each one its own
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert "old-session-secret" not in env.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == [".env"]  # no temp or copy left behind


def test_a_missing_env_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RotationError, match="does not exist"):
        rotate_env_secrets(tmp_path / ".env", ["SESSION_SECRET"])
