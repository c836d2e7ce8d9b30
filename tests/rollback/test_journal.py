"""The rollback journal: exactly one holder per run, claims that cannot be taken twice, fencing
tokens that shut out a former holder, takeover only from an executor that is certainly gone."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from spek_sentinel.rollback.journal import (
    MAX_TEXT,
    Journal,
    JournalRefusedError,
    LostRunError,
    Owner,
    RunHeldError,
    RunRecord,
    StaleTokenError,
    StepNotClaimableError,
    StepRecord,
    bound_text,
    holding,
    owner_is_gone,
)
from spek_sentinel.store.open import StateLocation
from spek_sentinel.store.records import StateStore
from spek_sentinel.store.schema import MIGRATIONS
from state_helpers import schema_version

FINGERPRINT = "f" * 64


@pytest.fixture
def journal(state: StateLocation) -> Iterator[Journal]:
    """On SQLite and on PostgreSQL: the same contract."""
    opened = Journal.open(state)
    yield opened
    opened.close()


def begin(journal: Journal, owner: Owner, token: int = 0, incident: str = "inc-1") -> RunRecord:
    return journal.begin(
        incident, fingerprint=FINGERPRINT, plan="{}", owner=owner, token=token, at=10.0
    )


def claim(
    journal: Journal, owner: Owner, index: int = 0, token: int = 0, again: bool = False
) -> StepRecord:
    return journal.claim_step(
        "inc-1",
        index,
        f"step{index}",
        idempotent=True,
        destructive=False,
        owner=owner,
        token=token,
        at=20.0,
        again=again,
    )


def test_of_many_executors_racing_for_one_incident_exactly_one_holds_it(
    state: StateLocation,
) -> None:
    Journal.open(state).close()  # migrated before the race
    racers = 8
    start, finish = threading.Barrier(racers), threading.Barrier(racers)
    won: list[RunRecord] = []
    refused: list[JournalRefusedError] = []

    def racer() -> None:
        journal = Journal.open(state)  # a connection of its own, as another process has
        with holding(Owner.new()) as owner:  # every racer is alive until all have tried
            start.wait(10)
            try:
                won.append(begin(journal, owner))
            except RunHeldError as exc:
                refused.append(exc)
            finish.wait(10)
        journal.close()

    threads = [threading.Thread(target=racer) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(won) == 1 and len(refused) == racers - 1
    assert "may still be running" in refused[0].reason


def test_of_executors_racing_to_claim_one_step_exactly_one_claims_it(
    state: StateLocation,
) -> None:
    """The read that finds the step unclaimed and the write that claims it are one write
    transaction: the losers are told the step is taken (not a duplicate-key error), and the
    winner's claim is the one recorded."""
    with holding(Owner.new()) as owner:
        first = Journal.open(state)
        begin(first, owner)
        first.close()
        racers = 6
        start = threading.Barrier(racers)
        won: list[StepRecord] = []
        refused: list[StepNotClaimableError] = []
        failed: list[BaseException] = []

        def racer() -> None:
            journal = Journal.open(state)
            try:
                start.wait(10)
                won.append(claim(journal, owner, index=3))
            except StepNotClaimableError as exc:
                refused.append(exc)
            except BaseException as exc:
                failed.append(exc)
            finally:
                journal.close()

        threads = [threading.Thread(target=racer) for _ in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert failed == []
    assert len(won) == 1 and len(refused) == racers - 1
    assert "already claimed" in refused[0].reason
    reader = Journal.open(state)
    assert reader.steps("inc-1")[3].attempt == 1
    reader.close()


def test_a_step_is_claimed_once_and_only_its_own_attempt_records_its_end(
    journal: Journal,
) -> None:
    with holding(Owner.new()) as owner:
        begin(journal, owner)
        first = claim(journal, owner)
        assert (first.status, first.attempt, first.claimed_at) == ("claimed", 1, 20.0)
        with pytest.raises(StepNotClaimableError, match="already claimed"):
            claim(journal, owner)
        second = claim(journal, owner, again=True)  # an idempotent step run again on resume
        assert second.attempt == 2
        with pytest.raises(LostRunError, match="attempt 1 is no longer claimed"):
            journal.finish_step("inc-1", 0, owner=owner, attempt=1, status="succeeded", at=30.0)
        done = journal.finish_step(
            "inc-1", 0, owner=owner, attempt=2, status="succeeded", at=32.5, output="ok"
        )
        assert (done.status, done.duration, done.output) == ("succeeded", 12.5, "ok")
        with pytest.raises(StepNotClaimableError, match="already succeeded"):
            claim(journal, owner, again=True)


def test_a_lower_fencing_token_is_refused_and_a_higher_one_fences_out_the_holder(
    journal: Journal,
) -> None:
    with holding(Owner.new()) as former, holding(Owner.new()) as leader:
        begin(journal, former, token=5)
        with pytest.raises(StaleTokenError, match="fencing token 3 is lower than 5"):
            begin(journal, leader, token=3)
        with pytest.raises(RunHeldError):  # equal token, holder alive: no takeover
            begin(journal, leader, token=5)
        in_flight = claim(journal, former, index=0, token=5)

        taken = begin(journal, leader, token=6)  # a new leader takes over at once
        assert taken.owner == str(leader) and taken.fencing_token == 6
        # the former holder, paused and now awake, may record how its step ended ...
        journal.finish_step(
            "inc-1", 0, owner=former, attempt=in_flight.attempt, status="succeeded", at=25.0
        )
        # ... but may not act any more: every claim and run write checks the token
        with pytest.raises(StaleTokenError, match="fencing token 5 is lower than 6"):
            claim(journal, former, index=1, token=5)
        with pytest.raises(StaleTokenError):
            journal.finish_run(
                "inc-1", owner=former, token=5, status="succeeded", reason="", at=30.0
            )
        with pytest.raises(LostRunError, match="taken over"):  # a token that is not stale
            claim(journal, former, index=1, token=6)  # is no use without holding the run
        assert claim(journal, leader, index=1, token=6).owner == str(leader)
    assert set(journal.steps("inc-1")) == {0, 1}


def exited_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)
    return process.pid


def test_only_an_owner_that_is_certainly_gone_is_taken_over_with_the_same_token(
    journal: Journal,
) -> None:
    host = Owner.new().host
    crashed = Owner(host, exited_pid(), "crashed")
    other_host = Owner("some-other-host", 1, "remote")
    earlier_me = Owner(host, Owner.new().pid, "before-restart")  # same pid, not live here
    assert owner_is_gone(crashed) and owner_is_gone(earlier_me)
    assert not owner_is_gone(other_host)
    with holding(Owner.new()) as me:
        assert not owner_is_gone(me)
        begin(journal, crashed, incident="inc-1")
        assert begin(journal, me, incident="inc-1").owner == str(me)

        begin(journal, earlier_me, incident="inc-2")
        assert begin(journal, me, incident="inc-2").owner == str(me)

        begin(journal, other_host, incident="inc-3")
        with pytest.raises(RunHeldError, match="needs a higher fencing token"):
            begin(journal, me, incident="inc-3")


def test_a_finished_run_is_never_begun_again(journal: Journal) -> None:
    with holding(Owner.new()) as owner, holding(Owner.new()) as later:
        begin(journal, owner)
        journal.finish_run("inc-1", owner=owner, token=0, status="halted", reason="why", at=40.0)
        again = begin(journal, later, token=9)
        assert (again.status, again.reason, again.owner) == ("halted", "why", str(owner))
        with pytest.raises(LostRunError):
            claim(journal, later, token=9)


def test_the_journal_lives_in_the_versioned_state_store_and_survives_a_reopen(
    state: StateLocation,
) -> None:
    store = StateStore.open(state)  # the same state, opened by the state store too
    journal = Journal.open(state)
    with holding(Owner.new()) as owner:
        begin(journal, owner)
        claim(journal, owner)
    journal.close()
    store.close()
    assert schema_version(state) == len(MIGRATIONS)
    reopened = Journal.open(state)
    assert reopened.steps("inc-1")[0].status == "claimed"
    run = reopened.run("inc-1")
    assert run is not None and run.started_at == 10.0 and run.status == "running"
    reopened.close()


def test_stored_text_is_bounded_keeping_head_and_tail() -> None:
    text = "HEAD" + "x" * 10_000 + "TAIL"
    bounded = bound_text(text, 1000)
    assert bounded.startswith("HEAD") and bounded.endswith("TAIL")
    assert "[... 9008 characters cut ...]" in bounded and len(bounded) < 1100
    assert bound_text("short", 1000) == "short" and MAX_TEXT >= 16_000
