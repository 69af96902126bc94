"""Judging a service rollout: one look at the service (a :class:`RolloutProbe`) in, a :class:`Verdict` out.

The executor writes a service's new secret references, then looks at the service again and again and
asks :func:`judge` what that look means. The judge follows the docker CLI's rules
(``cli/command/service/progress``): a rollout has **converged** when the engine's ``UpdateStatus``
is terminal (or absent: nothing needed replacing) *and* the up-to-date tasks run, as many as desired.
Besides that it tells apart:

* **rolled back** — Swarm's own rollback (``FailureAction: rollback``, or ``docker service rollback``
  by a person): ``UpdateStatus.State`` is ``rollback_*``; watched until the rollback itself settles;
* **paused** — Swarm paused the update after a task failed (``FailureAction: pause``);
* **superseded** — a *foreign write*: the spec moved on and no longer holds the versions we wrote, but
  no rollback state says Swarm did it. Someone (a person, a stack deploy, another tool) replaced our
  spec. Not held like a failed rollout: the next plan looks at the service as it is now;
* **timed out** — none of the above within the timeout.

:class:`Outcome` is the one list of rollout outcomes, used by the executor, the progress display, the
metrics and the loop.

Pure: no docker, no clock (``now`` is passed in), no I/O. The judge keeps what it learned from
earlier looks (the first task error, why a rollback started) in the :class:`Rollout` it returns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

__all__ = ["Outcome", "Rollout", "RolloutProbe", "Verdict", "judge"]


class Outcome(enum.StrEnum):
    """How one service's update ended (the value is the word used in output, JSON and metrics)."""

    CONVERGED = "converged"
    """The new versions run: terminal update state, up-to-date tasks running as desired."""
    UNCHANGED = "unchanged"
    """Nothing to write: the service already had exactly these references."""
    ROLLED_BACK = "rolled_back"
    """Swarm rolled the update back (automatically or on a person's request); old versions run."""
    PAUSED = "paused"
    """Swarm paused the update after a task failure."""
    SUPERSEDED = "superseded"
    """Someone else wrote the service's spec during the rollout; it no longer holds what we wrote."""
    TIMED_OUT = "timed_out"
    """Still not converged at the timeout."""
    FAILED = "failed"
    """The update could not be made (the engine refused, the service vanished, kept changing)."""
    HELD = "held"
    """Not tried: the same update rolled back or paused before (the long-running loop only)."""

    @property
    def ok(self) -> bool:
        return self in (Outcome.CONVERGED, Outcome.UNCHANGED)

    @property
    def failed_rollout(self) -> bool:
        """Swarm itself refused the new versions: the same update would fail again, so the loop
        holds it until something changes. A superseded rollout is not one of these."""
        return self in (Outcome.ROLLED_BACK, Outcome.PAUSED)


ROLLBACK_STATES = frozenset({"rollback_started", "rollback_paused", "rollback_completed"})
ROLLBACK_SETTLED = frozenset({"rollback_paused", "rollback_completed"})


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutProbe:
    """One look at a service's rollout, as the docker CLI's progress display reads it."""

    state: str | None
    """``UpdateStatus.State`` or None when the engine recorded none."""
    started_at: str | None
    """``UpdateStatus.StartedAt``: tells this rollout's status from an earlier one."""
    message: str
    spec_secret_ids: frozenset[str]
    """Secret IDs the current Spec references (a rollback or a foreign write swaps ours out)."""
    running: int
    """Tasks of the current spec that are running on a node that is ready."""
    desired: int
    """Tasks the service wants (replicas, or the global count the engine computed)."""
    failed_tasks: tuple[str, ...] = ()
    """Recent error messages of tasks of the current spec that failed (for the report)."""
    unavailable: int = 0
    """Tasks of the current spec that report running on a node that is not ready (down, or unknown
    after a leader change): never counted as running (they may not run at all), only reported."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rollout:
    """What was written and what the judge learned so far; start one per service update."""

    written: frozenset[str]
    """Secret IDs our write added to the Spec."""
    baseline_started_at: str | None
    """``UpdateStatus.StartedAt`` before our write: a status with this start is an older rollout's."""
    deadline: float
    """When to give up, on the caller's clock."""
    timeout: float
    """Seconds from the write to ``deadline`` (for the message)."""
    task_error: str = ""
    rollback_why: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    rollout: Rollout
    """Pass this to the next :func:`judge` call."""
    outcome: Outcome | None
    """None: not over yet, look again."""
    state: str
    """For a progress display: the engine's state of this rollout, or ``updating``."""
    progress: str
    """``1/2 tasks running``."""
    detail: str
    """The report line when ``outcome`` is set."""


def judge(rollout: Rollout, probe: RolloutProbe, now: float) -> Verdict:
    """What ``probe``, taken at ``now``, says about ``rollout`` (see the module docstring)."""
    fresh = probe.state is not None and probe.started_at != rollout.baseline_started_at
    state = probe.state if fresh else None
    if not rollout.task_error and probe.failed_tasks:
        rollout = replace(rollout, task_error=probe.failed_tasks[0])
    running = f"{probe.running}/{probe.desired} tasks running"
    if probe.unavailable:
        running += f", {probe.unavailable} more on nodes that are down or not ready"
    task_error = f"; task error: {rollout.task_error}" if rollout.task_error else ""
    timed_out = now >= rollout.deadline

    def verdict(outcome: Outcome | None, detail: str = "", shown: str | None = None) -> Verdict:
        return Verdict(
            rollout=rollout,
            outcome=outcome,
            state=outcome.value if outcome is not None else (shown or state or "updating"),
            progress=running,
            detail=detail,
        )

    ours = rollout.written <= probe.spec_secret_ids
    if state in ROLLBACK_STATES or (not ours and rollout.rollback_why):
        # Swarm rolls back (the spec swap and the rollback state are one store write). Keep watching
        # until the rollback itself settles, so the report says what state the service is left in.
        if not rollout.rollback_why:
            rollout = replace(rollout, rollback_why=probe.message or "the update was rolled back")
        settled = state in ROLLBACK_SETTLED or (state is None and not ours)
        if settled or timed_out:
            end = "" if settled else "; the rollback was still running at the timeout"
            where = f"{state or 'spec reverted'}, {probe.running}/{probe.desired} running{end}"
            return verdict(Outcome.ROLLED_BACK, f"rolled back: {rollout.rollback_why}{task_error} ({where})")
        return verdict(None, shown=state)
    if not ours:
        return verdict(
            Outcome.SUPERSEDED,
            "superseded: the service spec was changed by someone else during the rollout and no longer "
            f"holds the new versions (state {state or 'none'}, {running}); the next plan looks again",
        )
    if state == "paused":
        why = (probe.message or "update paused") + task_error
        return verdict(
            Outcome.PAUSED,
            f"paused: {why} (fix the cause, then `docker service update --rollback` or re-run)",
        )
    if probe.running >= probe.desired and (state is None or state == "completed"):
        return verdict(Outcome.CONVERGED, running)
    if timed_out:
        status = f"{state or 'pending'} {probe.running}/{probe.desired} running"
        return verdict(Outcome.TIMED_OUT, f"timed out after {rollout.timeout:.0f} s ({status}){task_error}")
    return verdict(None)
