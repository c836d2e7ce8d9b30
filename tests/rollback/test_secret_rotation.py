"""Scenario 5's secret rotation on a real env file."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from spek_sentinel.rollback.secret_rotation import (
    RotationError,
    check_env_file,
    rotate_env_secrets,
)

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


def test_the_rotated_file_keeps_its_owner_so_the_app_can_still_read_it(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(ENV, encoding="utf-8")
    env.chmod(0o640)
    os.chown(env, 10001, 10002)  # the app's user and group (the tests run as root)
    check_env_file(env)
    rotate_env_secrets(env, ["SESSION_SECRET"])
    after = env.stat()
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (10001, 10002, 0o640)
    assert [p.name for p in tmp_path.iterdir()] == [".env"]


def test_pre_flight_refuses_a_file_whose_owner_could_not_be_kept() -> None:
    # /tmp itself, not pytest's root-only tmp_path: the unprivileged user must reach the dir
    directory = Path(tempfile.mkdtemp(prefix="rotation-owner-", dir="/tmp"))
    try:
        directory.chmod(0o777)
        env = directory / ".env"
        env.write_text(ENV, encoding="utf-8")
        os.chown(env, 10001, 10002)
        os.setegid(10003)  # another unprivileged user: may write the dir, may not give files
        os.seteuid(10003)
        try:
            with pytest.raises(RotationError, match="its owner 10001:10002"):
                check_env_file(env)
        finally:
            os.seteuid(0)
            os.setegid(0)
        assert sorted(p.name for p in directory.iterdir()) == [".env"]  # the trial is gone
    finally:
        shutil.rmtree(directory, ignore_errors=True)
