"""Leader election with fencing tokens, against a real Redis and a real PostgreSQL.

Contenders are driven one tick (``acquire_or_renew``) at a time from one event loop; after
every tick the rig asserts the invariant that matters: never two contenders acting as leader
at once. A contender that is not ticked is a leader that stopped renewing (paused, hung).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import redis

from harness.redis_server import RedisServer, RedisTarget
from harness.wait import wait_until
from spek_sentinel.ha import (
    Leadership,
    LeaderStatus,
    NotLeaderError,
    PostgresFence,
    PostgresLeadership,
    RedisLeadership,
    SingleNode,
    fencing_guard,
    maintain,
)
from spek_sentinel.ha.lease import LEASE_MARGIN, LeaseLeadership

TTL = 1.0
INTERVAL = TTL / 4  # how often the rig ticks a contender: its renew interval
SLACK = 0.5  # scheduling and round trips on a busy test machine
LOCK_ID = 7_001


class Rig:
    """Contenders on one event loop, ticked on demand; checks the one-leader invariant."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()
        self.contenders: list[LeaseLeadership] = []
        self.used: list[int] = []  # every token a contender acted with, in order

    def add(self, contender: LeaseLeadership) -> LeaseLeadership:
        self.contenders.append(contender)
        return contender

    def tick(self, *contenders: LeaseLeadership) -> list[LeaderStatus]:
        statuses = []
        for contender in contenders:
            statuses.append(self.runner.run(contender.acquire_or_renew()))
            self.assert_one_leader()
        return statuses

    def assert_one_leader(self) -> None:
        leaders = [c for c in self.contenders if c.is_leader]
        assert len(leaders) <= 1, f"two leaders at once: {[c.owner_id for c in leaders]}"
        for leader in leaders:
            token = leader.token
            assert token is not None
            if not self.used or self.used[-1] != token:
                self.used.append(token)

    def until(
        self,
        predicate: Callable[[], bool],
        *contenders: LeaseLeadership,
        timeout: float = 15.0,
        message: str = "condition not met",
    ) -> None:
        def step() -> bool:
            self.tick(*contenders)
            return predicate()

        wait_until(step, timeout=timeout, interval=INTERVAL, message=message)

    def leader_of(self, *contenders: LeaseLeadership) -> LeaseLeadership:
        self.until(
            lambda: any(c.is_leader for c in contenders),
            *contenders,
            message="nobody became leader",
        )
        return next(c for c in contenders if c.is_leader)

    def close(self) -> None:
        for contender in self.contenders:
            self.runner.run(contender.release())
        self.runner.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = Rig()
    try:
        yield made
    finally:
        made.close()


def acquired_at(status: LeaderStatus) -> float:
    """The ``now`` of the acquisition or renewal that produced this status."""
    assert status.expires_at is not None
    return status.expires_at - TTL * (1 - LEASE_MARGIN)


def contender(
    rig: Rig, target: RedisTarget, owner: str, fence: PostgresFence | None = None
) -> RedisLeadership:
    made = RedisLeadership(
        target.url, target.key("leader"), owner, TTL, renew_interval=INTERVAL, fence=fence
    )
    rig.add(made)
    return made


# ---- Redis -------------------------------------------------------------------------------


def test_two_redis_contenders_exactly_one_leads(rig: Rig, redis_url: RedisTarget) -> None:
    a = contender(rig, redis_url, "a")
    b = contender(rig, redis_url, "b")
    first, second = rig.tick(a, b)
    assert first.token is not None and first.holder == "a"
    # The very first token (a fresh counter) settles for one ttl before acting.
    assert not first.is_leader and first.settles_at is not None
    assert not second.is_leader and second.token is None and second.holder == "a"

    assert rig.leader_of(a, b) is a
    assert not b.is_leader and b.token is None
    with pytest.raises(NotLeaderError, match="b may not act") as refused:
        b.fencing_token()
    assert refused.value.holder == "a"
    assert "a holds it now" in str(refused.value)
    a.assert_current(a.fencing_token())


def test_the_local_lease_ends_before_the_lock_expires(rig: Rig, redis_url: RedisTarget) -> None:
    a = contender(rig, redis_url, "a")
    leader = rig.leader_of(a)
    status = rig.tick(leader)[0]
    assert status.is_leader and status.token is not None and status.expires_at is not None
    leader.assert_current(status.token, now=status.expires_at - 0.01)
    with pytest.raises(NotLeaderError, match=r"lease .* ran out"):
        leader.assert_current(status.token, now=status.expires_at)
    with pytest.raises(NotLeaderError, match="stale"):
        leader.assert_current(status.token - 1, now=status.expires_at - 0.01)
    with redis.Redis.from_url(redis_url.url) as client:
        remaining_ms = client.pttl(redis_url.key("leader"))
    # The server's expiry is later than the local lease: a follower can take over only
    # after the former leader stopped acting.
    assert remaining_ms / 1000 > status.expires_at - time.monotonic()


def test_the_follower_takes_over_within_ttl_and_one_renew_interval(
    rig: Rig, redis_url: RedisTarget, caplog: pytest.LogCaptureFixture
) -> None:
    a = contender(rig, redis_url, "a")
    b = contender(rig, redis_url, "b")
    assert rig.leader_of(a, b) is a
    last = rig.tick(a, b)[0]  # a's last renewal; then it stops (paused)
    old = last.token
    assert old is not None

    caplog.set_level(logging.INFO, logger="spek_sentinel.ha")
    rig.until(lambda: b.is_leader, b, message="b did not take over")
    taken = b.status()
    assert taken.token is not None and taken.token > old
    # Not before a's lease ended, and within ttl + one renew interval of a's last renewal.
    assert last.expires_at is not None and acquired_at(taken) >= last.expires_at
    assert acquired_at(taken) - acquired_at(last) <= TTL + INTERVAL + SLACK
    assert f"leadership taken over: b holds {redis_url.key('leader')} with fencing token " in (
        caplog.text
    )
    assert "(took over from a)" in caplog.text

    # a wakes up: its old token is refused, locally, without a round trip...
    with pytest.raises(NotLeaderError, match="ran out"):
        a.assert_current(old)
    # ...and after its next tick it knows who leads now, and has not stolen the lock.
    status = rig.tick(a)[0]
    assert not status.is_leader and status.holder == "b"
    with pytest.raises(NotLeaderError, match="b holds it now"):
        a.assert_current(old)
    assert "leadership lost: a no longer leads" in caplog.text
    with redis.Redis.from_url(redis_url.url, decode_responses=True) as client:
        assert client.get(redis_url.key("leader")) == "b"
    again = rig.tick(b)[0]
    assert again.is_leader and again.token == taken.token


def test_renewing_a_lock_someone_else_holds_does_not_steal_it(
    rig: Rig, redis_url: RedisTarget
) -> None:
    a = contender(rig, redis_url, "a")
    leader = rig.leader_of(a)
    token = leader.fencing_token()
    key = redis_url.key("leader")
    with redis.Redis.from_url(redis_url.url, decode_responses=True) as client:
        # The lock vanished and another contender took it with a newer token.
        client.set(key, "intruder", px=5_000)
        client.incr(f"{key}:token")
        status = rig.tick(leader)[0]
        assert not status.is_leader and status.holder == "intruder"
        assert client.get(key) == "intruder"
        assert client.pttl(key) > 4_000  # not extended, not deleted
    with pytest.raises(NotLeaderError, match="intruder holds it now"):
        leader.assert_current(token)


def test_tokens_strictly_increase_across_takeovers(rig: Rig, redis_url: RedisTarget) -> None:
    contenders = [contender(rig, redis_url, name) for name in ("a", "b", "c")]
    tokens = []
    leader = rig.leader_of(*contenders)
    for round_ in range(4):
        tokens.append(leader.fencing_token())
        followers = [c for c in contenders if c is not leader]
        if round_ % 2:
            rig.runner.run(leader.release())  # handing over
        # else: the leader just stops renewing (its lock expires)
        leader = rig.leader_of(*followers)
    tokens.append(leader.fencing_token())
    assert tokens == sorted(set(tokens)), tokens
    assert rig.used == tokens
    with redis.Redis.from_url(redis_url.url) as client:
        assert int(client.get(redis_url.key("leader:token")) or 0) == tokens[-1]


def test_a_redis_restart_never_gives_two_leaders_and_the_token_moves_on(
    rig: Rig, postgres_db: str
) -> None:
    fence = PostgresFence(postgres_db, "redis-leader")
    server = RedisServer()  # our own: this test restarts it
    try:
        server.start()
        target = RedisTarget(url=server.url(), prefix="restart:")
        a = contender(rig, target, "a", fence=fence)
        b = contender(rig, target, "b", fence=fence)
        assert rig.leader_of(a, b) is a
        rig.runner.run(a.release())
        assert rig.leader_of(b, a) is b
        before = list(rig.used)
        assert before == [1, 2] and fence.highest() == 2

        server.stop()  # no persistence: the lock and the token counter are gone
        server.start()
        # A replica that was restarted too knows no token; the fence does.
        c = contender(rig, target, "c", fence=fence)
        status = rig.tick(c)[0]
        assert status.token is not None and status.token > max(before)
        assert not status.is_leader  # settling: b may still believe it leads
        # b may still act on its lease for a moment; the rig asserts after every tick that
        # c does not act before b stopped.
        rig.until(lambda: c.is_leader, c, a, b, message="c never acted as leader")
        token = c.fencing_token()
        assert token == status.token
        assert rig.used == [*before, token]
        assert not b.is_leader and b.status().holder == "c"

        assert fence.highest() == token
        record = fence.current()
        assert record is not None and record.holder == "c"
        with pytest.raises(NotLeaderError, match="c holds the newer token"):
            fence.check(max(before))
        fence.check(token)
        fencing_guard(c, fence)(token)
        with pytest.raises(NotLeaderError):
            fencing_guard(b, fence)(max(before))
        with redis.Redis.from_url(target.url) as client:
            assert int(client.get(target.key("leader:token")) or 0) == token
    finally:
        for made in rig.contenders:
            rig.runner.run(made.release())
        server.close()


def test_a_token_that_cannot_be_recorded_is_not_used(rig: Rig, redis_url: RedisTarget) -> None:
    fence = PostgresFence("postgresql://postgres@127.0.0.1:1/nowhere", connect_timeout=2)
    a = contender(rig, redis_url, "a", fence=fence)
    status = rig.tick(a)[0]
    assert not status.is_leader and status.token is None
    with redis.Redis.from_url(redis_url.url) as client:
        assert client.get(redis_url.key("leader")) is None  # given back for another to try


def test_maintain_keeps_leadership_and_releases_it_on_stop(redis_url: RedisTarget) -> None:
    a = RedisLeadership(redis_url.url, redis_url.key("leader"), "a", TTL)
    seen: list[LeaderStatus] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        leading = asyncio.Event()

        def on_status(status: LeaderStatus) -> None:
            seen.append(status)
            if status.is_leader:
                leading.set()

        task = asyncio.create_task(maintain(a, stop, on_status))
        await asyncio.wait_for(leading.wait(), 10)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert isinstance(a, Leadership)
    assert seen[-1].is_leader and not a.is_leader
    with redis.Redis.from_url(redis_url.url) as client:
        assert client.get(redis_url.key("leader")) is None


# ---- PostgreSQL advisory lock --------------------------------------------------------------


def pg_contender(rig: Rig, dsn: str, owner: str) -> PostgresLeadership:
    made = PostgresLeadership(dsn, LOCK_ID, owner, TTL, renew_interval=INTERVAL)
    rig.add(made)
    return made


def terminate(dsn: str, owner: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            (owner,),
        ).fetchall()
    assert rows == [(True,)]


def test_postgres_one_contender_wins_and_a_killed_session_hands_over(
    rig: Rig, postgres_db: str
) -> None:
    a = pg_contender(rig, postgres_db, "a")
    b = pg_contender(rig, postgres_db, "b")
    first, second = rig.tick(a, b)
    assert first.token is not None and not first.is_leader  # settles: the lock cannot expire
    assert second.token is None and second.holder == "a"
    assert rig.leader_of(a, b) is a
    old = a.fencing_token()

    terminate(postgres_db, "a")
    # b ticks first: the server freed a's lock with its session, and a does not know yet.
    taken = rig.tick(b)[0]
    assert taken.token is not None and taken.token > old
    assert a.is_leader and not taken.is_leader  # b settles until a's lease has ended
    assert rig.leader_of(b, a) is b
    assert b.fencing_token() == taken.token
    with pytest.raises(NotLeaderError, match="b holds it now"):
        a.assert_current(old)
    assert rig.used == [old, taken.token]


def test_postgres_leader_that_stops_renewing_loses_the_lock(rig: Rig, postgres_db: str) -> None:
    a = pg_contender(rig, postgres_db, "a")
    b = pg_contender(rig, postgres_db, "b")
    assert rig.leader_of(a, b) is a
    last = rig.tick(a)[0]
    assert last.token is not None

    # a stops renewing (a paused process keeps its TCP connection open); the server ends the
    # idle session after one ttl, and the lock with it.
    rig.until(lambda: b.status().token is not None, b, message="b never got the lock")
    taken = b.status()
    assert taken.token is not None and taken.token > last.token
    assert acquired_at(taken) - acquired_at(last) <= TTL + INTERVAL + SLACK
    with pytest.raises(NotLeaderError):
        a.assert_current(last.token)
    assert rig.leader_of(b, a) is b
    assert rig.tick(a)[0].holder == "b"


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
