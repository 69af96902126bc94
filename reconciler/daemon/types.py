"""What a tick is asked to do and what it reports: the data shared by the loop, the tick and the metrics.

Kept apart from ``loop.py`` so that the metrics and the HTTP side can read a :class:`TickResult`
without importing the loop (which imports them). Data only: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True, kw_only=True)
class TickRequest:
    """What the tick is asked to do, and why."""

    reason: str
    """The earliest of the coalesced reasons: startup, interval, retry, webhook:<provider>, manual,
    event or git."""
    reasons: tuple[str, ...] = ()
    """Every distinct reason coalesced into this tick, earliest first."""
    manifests_dir: Path | None = None
    """Folder to load manifests from (``LoopSettings.manifests_dir``, or the git checkout)."""
    revision: str | None = None
    """Git commit of ``manifests_dir`` when :func:`with_git` fetched it, else None."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TickResult:
    """What one tick did; the loop and the metrics read it, nothing in it is a value."""

    ok: bool
    """Converged, or nothing to do."""
    changed: bool
    """Any mutation was made (starts the event quiet window)."""
    revision: str | None = None
    """Git revision applied, if any."""
    created: int = 0
    """Secret versions created."""
    removed: int = 0
    """Secret versions removed."""
    rollouts: Mapping[str, int] = field(default_factory=dict)
    """Rollouts by outcome (a :class:`~reconciler.core.rollout.Outcome` value: converged, rolled_back,
    paused, superseded, timed_out, failed, unchanged, held)."""
    drift_corrected: int = 0
    """Service updates whose reason was drift."""
    managed_secrets: int = 0
    """Secret objects owned by the tool after the tick."""
    error: str | None = None
    """One-line error when not ok."""


Tick = Callable[[TickRequest], TickResult]
"""The reconcile step: may raise; a SwarmSecretsError counts as a failed tick, anything else as a bug."""
