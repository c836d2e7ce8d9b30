"""The [rollback] section: the database and application targets, refused when ambiguous."""

from __future__ import annotations

from pathlib import Path

import pytest

from spek_sentinel.config import load_config
from spek_sentinel.domain.errors import ConfigError

SHIPPED = Path(__file__).resolve().parent.parent / "thresholds.toml"


def test_the_shipped_table_describes_the_runbooks_database_and_application() -> None:
    rollback = load_config(SHIPPED, environ={}).model.rollback
    assert rollback.downtime_budget == 600 and rollback.downtime_target == 300
    assert rollback.database is not None
    assert (rollback.database.container, rollback.database.dbname) == ("spek-postgres", "spek_db")
    assert rollback.database.migrate_down_command == ["node", "scripts/migrate.js", "down"]
    assert rollback.application is not None and rollback.application.kind == "git"


def with_rollback(tmp_path: Path, section: str) -> Path:
    text = SHIPPED.read_text(encoding="utf-8")
    start = text.index("[rollback]\n")
    end = text.index("# ----", start)
    path = tmp_path / "thresholds.toml"
    path.write_text(text[:start] + section + "\n" + text[end:], encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("section", "path", "reason"),
    [
        (
            '[rollback.database]\ndsn_env = "A"\ncontainer = "spek-postgres"\n',
            "rollback.database",
            "set exactly one of dsn_env, dsn_file or container",
        ),
        (
            '[rollback.database]\ncontainer = "spek-postgres"\n',
            "rollback.database",
            "needs dbname and user",
        ),
        (
            '[rollback.database]\ndsn_env = "A"\nmigrations_dir = "m"\n'
            'migrate_down_command = ["x"]\n',
            "rollback.database",
            "not both",
        ),
        (
            '[rollback.application]\nkind = "git"\nrepo = "/srv/app"\n',
            "rollback.application.stop_command",
            "required key is missing",
        ),
        ('[rollback]\ndowntime_budget = "-1m"\n', "rollback.downtime_budget", "negative"),
    ],
)
def test_ambiguous_or_incomplete_targets_are_refused(
    tmp_path: Path, section: str, path: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(with_rollback(tmp_path, section), environ={})
    problems = [(p.path, p.reason) for p in caught.value.problems]
    assert any(p == path and reason in r for p, r in problems), problems
