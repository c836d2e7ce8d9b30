"""The leadership the ``[ha]`` section asks for: a single node by default, else a Redis or
PostgreSQL lock, with a PostgreSQL fence when ``fence_dsn_env`` / ``fence_dsn_file`` is set."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

from spek_sentinel.config import Config
from spek_sentinel.ha.fence import PostgresFence
from spek_sentinel.ha.leader import Leadership, SingleNode, fencing_guard
from spek_sentinel.ha.postgres_lock import PostgresLeadership
from spek_sentinel.ha.redis_lock import RedisLeadership
from spek_sentinel.secrets import read_secret


def replica_name(config: Config) -> str:
    return config.model.ha.replica or f"{socket.gethostname()}:{os.getpid()}"


def build_leadership(
    config: Config, environ: Mapping[str, str]
) -> tuple[Leadership, Callable[[int], None]]:
    """The leadership and the guard every rollback step passes (lease, then fence)."""
    ha = config.model.ha
    owner = replica_name(config)
    if ha.backend == "none":
        single = SingleNode(owner)
        return single, single.assert_current
    url = read_secret("ha", environ, field="url", env=ha.url_env, file=ha.url_file).value
    fence = None
    if ha.fence_dsn_env is not None or ha.fence_dsn_file is not None:
        dsn = read_secret(
            "ha", environ, field="fence_dsn", env=ha.fence_dsn_env, file=ha.fence_dsn_file
        ).value
        fence = PostgresFence(dsn)
    leadership: Leadership
    if ha.backend == "redis":
        leadership = RedisLeadership(url, ha.key, owner, ha.ttl, fence=fence)
    else:
        leadership = PostgresLeadership(url, ha.lock_id, owner, ha.ttl, fence=fence)
    return leadership, fencing_guard(leadership, fence)
