"""What the long-running loop learns about the secrets after each tick: their monitoring snapshot and
when the next scheduled rotation falls due.

:func:`after_tick` turns a tick's outcome into :class:`Watch`: per set and secret the age of the
current version, whether its rotation is due and the superseded versions still present by what keeps
them (``core/status.py``, the rules ``status`` prints), which ``/metrics`` exports; and the seconds
until a generated secret's ``rotate.every`` runs out (``core/schedule.py``), so the loop ticks then
rather than at the next interval. A tick that changed the swarm is followed by one more observation,
so the snapshot shows the swarm as the tick left it (the new version, the collected old ones).

Names, ages and counts only: never a value. Failing to observe here never fails the tick.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from reconciler import converge
from reconciler.core import schedule
from reconciler.core.status import SecretStatus, build_status
from reconciler.engine.protocol import Swarm
from reconciler.errors import SwarmError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Watch:
    secrets: tuple[SecretStatus, ...] | None = None
    """Every managed secret of the swarm after the tick; None when it could not be observed."""
    next_rotation: float | None = None
    """Seconds until a generated secret's scheduled rotation falls due (0: due now); None: none is
    scheduled."""


def after_tick(swarm: Swarm, outcome: converge.Outcome) -> Watch:
    """The :class:`Watch` of the swarm as ``outcome``'s tick left it."""
    prepared = outcome.prepared
    live, desired = prepared.live, prepared.desired
    if outcome.changed:
        try:
            live = swarm.observe()
        except SwarmError as exc:
            log.warning("could not observe the swarm after the tick for its metrics: %s", exc)
            return Watch()
        if live.observed_at is not None:
            desired = replace(desired, now=live.observed_at)
    report = build_status(live, prepared.loaded.sets, now=desired.now)
    return Watch(secrets=report.secrets, next_rotation=schedule.next_rotation(desired, live))
