"""Leader election with fencing tokens, against a real Redis and a real PostgreSQL.

Contenders are driven one tick (``acquire_or_renew``) at a time from one event loop; after
every tick the rig asserts the invariant that matters: never two contenders acting as leader
at once. A contender that is not ticked is a leader that stopped renewing (paused, hung).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from harness.wait import wait_until
from spek_sentinel.ha import (
    Leadership,
    NotLeaderError,
    PostgresFence,
    SingleNode,
)

# ---- the fence ---------------------------------------------------------------------------


def test_the_fence_refuses_an_old_token_once_a_newer_one_advanced_it(postgres_db: str) -> None:
    fence = PostgresFence(postgres_db)
    with pytest.raises(NotLeaderError, match="no fencing token is recorded"):
        fence.check(1)
    assert fence.highest() == 0
    assert fence.advance(5, "a")
    fence.check(5)
    assert fence.advance(7, "b")
    with pytest.raises(NotLeaderError, match="token 5 is stale; b holds the newer token 7") as old:
        fence.check(5)
    assert old.value.holder == "b" and old.value.current_token == 7
    fence.check(7)
    assert not fence.advance(6, "a")  # never backwards
    record = fence.current()
    assert record is not None and (record.token, record.holder) == (7, "b")
    assert PostgresFence(postgres_db, "another").highest() == 0  # one row per name


def test_concurrent_advances_from_two_connections_leave_the_higher(postgres_db: str) -> None:
    fence = PostgresFence(postgres_db)
    fence.ensure_schema()
    barrier = threading.Barrier(2)

    def advance(token: int, holder: str) -> bool:
        barrier.wait(timeout=10)
        return fence.advance(token, holder)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for round_ in range(1, 16):
            high = 2 * round_ + 1
            order = [(high - 1, "low"), (high, "high")]
            if round_ % 2:
                order.reverse()
            results = list(pool.map(lambda args: advance(*args), order))
            record = fence.current()
            assert record is not None and (record.token, record.holder) == (high, "high")
            assert results[[t for t, _ in order].index(high)] is True


def test_a_step_that_passed_the_fence_commits_before_a_takeover_is_recorded(
    postgres_db: str,
) -> None:
    fence = PostgresFence(postgres_db)
    assert fence.advance(5, "a")
    with psycopg.connect(postgres_db, autocommit=True) as admin:
        admin.execute("CREATE TABLE steps (token BIGINT)")

        with ThreadPoolExecutor(max_workers=1) as pool:
            with fence.guarded(5) as conn:
                conn.execute("INSERT INTO steps VALUES (5)")
                takeover = pool.submit(fence.advance, 6, "b")
                wait_until(
                    lambda: (
                        admin.execute(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                        ).fetchone()
                        == (1,)
                    ),
                    message="the takeover did not wait for the guarded step",
                )
                assert not takeover.done()
            assert takeover.result(timeout=10) is True

        with pytest.raises(NotLeaderError, match="b holds the newer token 6"):  # noqa: SIM117
            with fence.guarded(5) as conn:
                conn.execute("INSERT INTO steps VALUES (5)")
        rows = admin.execute("SELECT token FROM steps").fetchall()
    assert rows == [(5,)]


# ---- single node -------------------------------------------------------------------------


def test_a_single_node_always_leads_with_token_one() -> None:
    node = SingleNode("here")
    status = asyncio.run(node.acquire_or_renew())
    assert status.is_leader and status.token == 1 and status.holder == "here"
    assert isinstance(node, Leadership)
    assert node.is_leader and node.fencing_token() == 1
    node.assert_current(1)
    with pytest.raises(NotLeaderError):
        node.check(2)
