"""Time in the plan: rotation periods, the age of a version, and when a rotation falls due.

A version's age is the swarm's clock at observation (:attr:`~reconciler.core.model.LiveState.observed_at`,
handed to the planner as :attr:`~reconciler.core.model.DesiredState.now`) minus the ``CreatedAt`` the
swarm stamped on the version. Both readings come from the swarm's managers, so the clock of the machine
running swarm-secrets does not matter; a difference between two managers' clocks (the one that stamped
the version, the one asked) shifts every age by that difference. NTP keeps managers within milliseconds;
a manager minutes off makes rotations come that much early or late, never twice: an age below zero
counts as zero, and the version a rotation just created is never due at once.

``rotate.every`` is ``<int><unit>`` with unit ``s``, ``m``, ``h``, ``d`` (86,400 s) or ``w`` (7 days).

Pure: no clock of its own (``now`` is always passed in), no I/O.
"""

from __future__ import annotations

import calendar
import re

from reconciler.core.collect import current_version
from reconciler.core.model import DesiredState, LiveSecret, LiveState, Rotation

__all__ = [
    "UNITS",
    "age",
    "created",
    "due_in",
    "format_age",
    "next_rotation",
    "parse_period",
    "parse_time",
    "rotation",
    "rotation_due",
]

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
"""Seconds per unit of a rotation period."""
_PERIOD = re.compile(r"([1-9][0-9]{0,8})([smhdw])")
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:Z|([+-])(\d\d):(\d\d))", re.IGNORECASE
)


def parse_period(text: str) -> int | None:
    """Seconds of ``90d`` / ``12h`` / ``5s``; None when ``text`` is not ``<int><s|m|h|d|w>``."""
    match = _PERIOD.fullmatch(text.strip())
    if match is None:
        return None
    return int(match.group(1)) * UNITS[match.group(2)]


def rotation(text: str) -> Rotation | None:
    """The :class:`Rotation` of ``rotate.every: text``; None when it is not a period."""
    seconds = parse_period(text)
    return None if seconds is None else Rotation(every=seconds, text=text.strip())


def parse_time(text: str) -> float | None:
    """An engine timestamp (RFC 3339, fractions up to nanoseconds, ``Z`` or an offset) as Unix seconds;
    None when unreadable."""
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        return None
    *fields, fraction, sign, hours, minutes = match.groups()
    year, month, day, hour, minute, second = map(int, fields)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    try:
        stamp = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except ValueError:
        return None
    if sign:
        offset = int(hours) * 3600 + int(minutes) * 60
        stamp -= offset if sign == "+" else -offset
    return stamp + (float("0." + fraction) if fraction else 0.0)


def created(secret: LiveSecret) -> float | None:
    """When the swarm created ``secret`` (its ``CreatedAt``), as Unix seconds."""
    return parse_time(secret.created_at) if secret.created_at else None


def age(secret: LiveSecret, now: float | None) -> float | None:
    """Seconds since ``secret`` was created, as of ``now`` (never below 0); None when unknown."""
    made = created(secret)
    if made is None or now is None:
        return None
    return max(0.0, now - made)


def due_in(rotate: Rotation, secret: LiveSecret, now: float | None) -> float | None:
    """Seconds until ``secret`` is due for rotation (0 or less: due); None when its age is unknown."""
    seconds = age(secret, now)
    return None if seconds is None else rotate.every - seconds


def rotation_due(rotate: Rotation | None, secret: LiveSecret, now: float | None) -> bool:
    """Whether ``secret`` is at least ``rotate.every`` old at ``now`` (False when anything is unknown)."""
    if rotate is None:
        return False
    left = due_in(rotate, secret, now)
    return left is not None and left <= 0


def format_age(seconds: float) -> str:
    """``6 seconds``, ``14 minutes``, ``5 hours``, ``91 days``: whole units, rounded down, in the
    largest unit that leaves at least 2 of it (so ``90d`` is never shown as ``3 months``)."""
    whole = int(max(0.0, seconds))
    for unit, size in (("day", 86_400), ("hour", 3600), ("minute", 60)):
        if whole >= 2 * size:
            count = whole // size
            return f"{count} {unit}s"
    return f"{whole} second" + ("" if whole == 1 else "s")


def next_rotation(desired: DesiredState, live: LiveState) -> float | None:
    """Seconds from ``desired.now`` until the next scheduled rotation of a generated secret falls due
    (0 when one is due already or has no version yet); None when no generated secret has a schedule
    or the time is unknown. The long-running loop ticks then."""
    if desired.now is None:
        return None
    versions: dict[tuple[str, str], list[LiveSecret]] = {}
    for secret in live.secrets:
        if secret.managed and secret.generator is not None and secret.set_name and secret.secret:
            versions.setdefault((secret.set_name, secret.secret), []).append(secret)
    waits = []
    for dset in desired.sets:
        for declared in dset.secrets:
            if declared.generator is None or declared.rotate is None:
                continue
            found = versions.get((dset.name, declared.secret), [])
            current = current_version(found, None, generator=declared.generator)
            left = None if current is None else due_in(declared.rotate, current, desired.now)
            waits.append(0.0 if left is None else max(0.0, left))
    return min(waits, default=None)
