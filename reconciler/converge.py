"""One reconciliation, step by step, shared by the CLI commands and the long-running loop.

1. :func:`load` reads and validates the manifests and resolves every source. It touches no swarm,
   so a bad manifest, a missing key or an undecryptable file stops the run before anything changes.
2. :func:`prepare` connects the results to one swarm: the fingerprint key, the desired state, the
   live state and the plan.
3. ``executor.execute`` applies a prepared plan.

Values stay inside :class:`Loaded` (as :class:`~reconciler.core.model.SecretValue`) and are handed only
to the executor; the desired state and the plan carry fingerprints.

The trust boundary (``core/guard.py``, the operator's ``Boundary``) is held in two places, both
before anything is read or changed: :func:`load` (via the loader: policy, source roots, reserved
variables, targets) before any source is read, and :func:`prepare` (``guard.enforce_live``: missing
services, the reconciler's own and engine-holding services, stacks, adopting) right after observing,
before planning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from reconciler import sources
from reconciler.core import guard, planner
from reconciler.core.desired import Values, build_desired
from reconciler.core.model import DesiredState, LiveState, SecretSet
from reconciler.core.plan import Plan
from reconciler.engine.keysource import find_key, load_key
from reconciler.engine.swarm import Swarm
from reconciler.errors import ConfigError, RevisionError
from reconciler.manifests import loader as manifest
from reconciler.manifests import revision as revisions
from reconciler.manifests.revision import RevisionGuard, detect_revision

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Loaded:
    sets: tuple[SecretSet, ...]
    values: Values
    revision: str | None
    boundary: guard.Boundary = field(default_factory=guard.Boundary)
    """What the operator allows the manifests (policy, self service, ...): held again in prepare()."""
    complete: bool = False
    """Every manifest was read (a skipped folder would have failed the load): --prune-orphans needs it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    loaded: Loaded
    desired: DesiredState
    live: LiveState
    plan: Plan


def load(
    paths: Sequence[Path],
    *,
    revision: str | None = None,
    environ: Mapping[str, str] | None = None,
    boundary: guard.Boundary | None = None,
    complete: bool = False,
) -> Loaded:
    """Load, validate and resolve: everything that can fail before the swarm is touched.

    ``complete``: every manifest must be read (``--prune-orphans``; see ``manifests.load``).
    """
    boundary = boundary or guard.Boundary()
    # [trust boundary] offline checks run inside the loader, before any source is read.
    sets = manifest.load(paths, boundary, complete=complete)
    values = sources.resolve(sets, environ, sops_env=boundary.sops_passthrough)
    revision = revision or detect_revision(paths, environ)
    return Loaded(sets=sets, values=values, revision=revision, boundary=boundary, complete=complete)


def prepare(
    loaded: Loaded,
    swarm: Swarm,
    *,
    key_file: Path | None = None,
    prune_orphans: bool = False,
    read_only: bool = False,
    revision_guard: RevisionGuard | None = None,
) -> Prepared:
    """``read_only``: for ``plan``, which must not even create the fingerprint key config.
    ``revision_guard``: refuse manifests older than what the swarm runs (apply, run); None skips it."""
    if prune_orphans and not loaded.complete:
        # Pruning takes every set it did not load for deleted: it must know it loaded them all.
        raise ConfigError("--prune-orphans needs the manifests loaded with complete=True (a bug)")
    # Observing is mostly waiting for the engine: fetch the key and fingerprint the values meanwhile.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="observe") as pool:
        observing = pool.submit(swarm.observe)
        key = find_key(swarm, key_file)
        desired = build_desired(loaded.sets, loaded.values, key, revision=loaded.revision) if key else None
        live = observing.result()
    # [trust boundary] checks that need the swarm; a violation raises before anything is planned.
    guard.enforce_live(loaded.sets, live, loaded.boundary)
    guard_revision(loaded, live, revision_guard)  # never the past over the present; nothing changed yet
    if desired is None:  # a fresh swarm: the key config is created only now, after the checks passed
        key = load_key(swarm, key_file, create=not read_only)
        desired = build_desired(loaded.sets, loaded.values, key, revision=loaded.revision)
    plan = planner.plan(desired, live, prune_orphans=prune_orphans)
    plan = replace(plan, governance=guard.governance(loaded.sets, loaded.boundary.policy))
    return Prepared(loaded=loaded, desired=desired, live=live, plan=plan)


# --- never the past over the present (issue 13) ---------------------------------------------------------
# Kept apart from the steps above so it can be re-attached as one call wherever the observed live state
# is first available and nothing has been changed yet.


def guard_revision(loaded: Loaded, live: LiveState, revision_guard: RevisionGuard | None) -> None:
    """Raise :class:`RevisionError` when the manifests are older than a revision the swarm records for
    one of the loaded sets (or that cannot be decided and the guard says refuse); else warn or pass."""
    if revision_guard is None:
        return
    recorded = revisions.recorded_revisions(live, (s.name for s in loaded.sets))
    problem = revisions.check_revision(loaded.revision, recorded, revision_guard.repository)
    if problem is None:
        return
    if revision_guard.refuses(problem):
        raise RevisionError(problem.message)
    flag = "--allow-older-revision" if revision_guard.allow_older else "--revision-check=warn"
    log.warning("%s; applying anyway, as %s says", problem.detail, flag)
