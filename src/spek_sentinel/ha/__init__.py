"""High availability: leader election with fencing tokens, for running two or three replicas.

``Leadership`` is the contract; ``SingleNode`` (the default SQLite setup), ``RedisLeadership``
and ``PostgresLeadership`` implement it; ``PostgresFence`` records the highest fencing token in
the shared database, where a mutating step checks it. See ``leader.py`` for the rules.
"""

from spek_sentinel.ha.fence import FenceRecord, PostgresFence
from spek_sentinel.ha.leader import (
    Leadership,
    LeaderStatus,
    NotLeaderError,
    SingleNode,
    TokenFence,
    fencing_guard,
    maintain,
)
from spek_sentinel.ha.postgres_lock import PostgresLeadership
from spek_sentinel.ha.redis_lock import RedisLeadership

__all__ = [
    "FenceRecord",
    "LeaderStatus",
    "Leadership",
    "NotLeaderError",
    "PostgresFence",
    "PostgresLeadership",
    "RedisLeadership",
    "SingleNode",
    "TokenFence",
    "fencing_guard",
    "maintain",
]
