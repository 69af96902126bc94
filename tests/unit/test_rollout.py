"""The rollout judge on plain data: one look at a service in, a verdict out (``core/rollout.py``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from reconciler.core.rollout import Outcome, Rollout, RolloutProbe, Verdict, judge

OURS = frozenset({"new"})
START = Rollout(written=OURS, baseline_started_at="t0", deadline=100.0, timeout=60.0)


def probe(**kw: Any) -> RolloutProbe:
    fields: dict[str, Any] = {
        "state": "updating",
        "started_at": "t1",
        "message": "update in progress",
        "spec_secret_ids": frozenset({"new", "other"}),
        "running": 0,
        "desired": 2,
    }
    fields.update(kw)
    return RolloutProbe(**fields)


def look(*probes: RolloutProbe, now: float = 50.0, rollout: Rollout = START) -> Verdict:
    """Judge several looks in a row, as the executor does; the last verdict."""
    verdict = None
    for one in probes:
        verdict = judge(rollout, one, now)
        rollout = verdict.rollout
    assert verdict is not None
    return verdict


def test_a_rollout_in_progress_goes_on_and_says_how_far_it_is() -> None:
    verdict = look(probe(running=1))
    assert verdict.outcome is None
    assert (verdict.state, verdict.progress) == ("updating", "1/2 tasks running")


def test_converged_needs_a_terminal_state_and_every_up_to_date_task_running() -> None:
    assert look(probe(state="completed", running=1)).outcome is None
    assert look(probe(state="updating", running=2)).outcome is None
    verdict = look(probe(state="completed", running=2))
    assert verdict.outcome is Outcome.CONVERGED and verdict.detail == "2/2 tasks running"


def test_no_status_at_all_is_a_rollout_that_replaced_nothing() -> None:
    # 0 replicas, or a change no task needed: the engine records no UpdateStatus
    verdict = look(probe(state=None, started_at=None, running=0, desired=0))
    assert verdict.outcome is Outcome.CONVERGED


def test_the_status_of_an_earlier_rollout_is_not_taken_for_this_one() -> None:
    # "completed" with the start time seen before our write belongs to the previous rollout
    stale = probe(state="completed", started_at="t0", running=1)
    assert look(stale).outcome is None
    assert look(probe(state="completed", started_at="t0", running=2)).outcome is Outcome.CONVERGED


def test_swarm_rolling_back_is_watched_until_the_rollback_settles() -> None:
    started = probe(
        state="rollback_started",
        message="update rolled back due to failure or early termination of task x",
        spec_secret_ids=frozenset({"old"}),
        failed_tasks=("task: non-zero exit (1)",),
    )
    verdict = look(started)
    assert verdict.outcome is None and verdict.state == "rollback_started"
    done = replace(
        started, state="rollback_completed", message="rollback completed", failed_tasks=(), running=2
    )
    verdict = look(started, done)
    assert verdict.outcome is Outcome.ROLLED_BACK and verdict.outcome.failed_rollout
    assert verdict.detail == (
        "rolled back: update rolled back due to failure or early termination of task x; "
        "task error: task: non-zero exit (1) (rollback_completed, 2/2 running)"
    )


def test_a_rollback_still_running_at_the_timeout_is_reported_as_such() -> None:
    started = probe(state="rollback_started", message="m", spec_secret_ids=frozenset({"old"}))
    verdict = look(started, now=100.0)
    assert verdict.outcome is Outcome.ROLLED_BACK
    assert "the rollback was still running at the timeout" in verdict.detail


def test_a_manual_rollback_is_a_rollback() -> None:
    verdict = look(
        probe(state="rollback_completed", message="manually requested rollback", spec_secret_ids=frozenset())
    )
    assert verdict.outcome is Outcome.ROLLED_BACK and "manually requested rollback" in verdict.detail


def test_paused_after_a_task_failure() -> None:
    verdict = look(
        probe(failed_tasks=("task: non-zero exit (1)",)),
        probe(state="paused", message="update paused due to failure or early termination of task x"),
    )
    assert verdict.outcome is Outcome.PAUSED and verdict.outcome.failed_rollout
    assert verdict.detail.startswith("paused: update paused due to failure")
    assert "task error: task: non-zero exit (1)" in verdict.detail  # remembered from the first look


@pytest.mark.parametrize("state", ["updating", "completed", None])
def test_a_foreign_write_is_superseded_not_rolled_back(state: str | None) -> None:
    # the spec no longer holds what we wrote, and no rollback state says Swarm did it
    verdict = look(probe(state=state, started_at="t2", spec_secret_ids=frozenset({"someone-else"})))
    assert verdict.outcome is Outcome.SUPERSEDED
    assert not verdict.outcome.failed_rollout and not verdict.outcome.ok
    assert "changed by someone else" in verdict.detail


def test_timed_out() -> None:
    verdict = look(probe(running=1, failed_tasks=("no such image",)), now=100.0)
    assert verdict.outcome is Outcome.TIMED_OUT
    assert verdict.detail == "timed out after 60 s (updating 1/2 running); task error: no such image"


def test_outcome_words_and_classes() -> None:
    assert [o.value for o in Outcome] == [
        "converged",
        "unchanged",
        "rolled_back",
        "paused",
        "superseded",
        "timed_out",
        "failed",
        "held",
    ]
    assert {o for o in Outcome if o.ok} == {Outcome.CONVERGED, Outcome.UNCHANGED}
    assert {o for o in Outcome if o.failed_rollout} == {Outcome.ROLLED_BACK, Outcome.PAUSED}
