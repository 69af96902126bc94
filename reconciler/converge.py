"""One reconciliation, step by step, shared by the CLI commands and the long-running loop.

1. :func:`load` reads and validates the manifests and resolves every source. It touches no swarm,
   so a bad manifest, a missing key or an undecryptable file stops the run before anything changes.
2. :func:`prepare` connects the results to one swarm: the fingerprint key, the desired state, the
   live state and the plan.
3. ``executor.execute`` applies a prepared plan.

Values stay inside :class:`Loaded` (as :class:`~reconciler.core.model.SecretValue`) and are handed only
to the executor; the desired state and the plan carry fingerprints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from reconciler import sources
from reconciler.core import planner
from reconciler.core.desired import Values, build_desired
from reconciler.core.model import DesiredState, LiveState, SecretSet
from reconciler.core.plan import Plan
from reconciler.engine.keysource import load_key
from reconciler.engine.swarm import Swarm
from reconciler.manifests import loader as manifest
from reconciler.manifests.revision import detect_revision


@dataclass(frozen=True, slots=True, kw_only=True)
class Loaded:
    sets: tuple[SecretSet, ...]
    values: Values
    revision: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    loaded: Loaded
    desired: DesiredState
    live: LiveState
    plan: Plan


def load(
    paths: Sequence[Path], *, revision: str | None = None, environ: Mapping[str, str] | None = None
) -> Loaded:
    """Load, validate and resolve: everything that can fail before the swarm is touched."""
    sets = manifest.load(paths)
    values = sources.resolve(sets, environ)
    return Loaded(sets=sets, values=values, revision=revision or detect_revision(paths, environ))


def prepare(
    loaded: Loaded,
    swarm: Swarm,
    *,
    key_file: Path | None = None,
    prune_orphans: bool = False,
    read_only: bool = False,
) -> Prepared:
    """``read_only``: for ``plan``, which must not even create the fingerprint key config."""
    # Observing is mostly waiting for the engine: fetch the key and fingerprint the values meanwhile.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="observe") as pool:
        observing = pool.submit(swarm.observe)
        key = load_key(swarm, key_file, create=not read_only)
        desired = build_desired(loaded.sets, loaded.values, key, revision=loaded.revision)
        live = observing.result()
    return Prepared(
        loaded=loaded,
        desired=desired,
        live=live,
        plan=planner.plan(desired, live, prune_orphans=prune_orphans),
    )
