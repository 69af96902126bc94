"""``swarm-secrets status`` as text for people and JSON for machines.

Pure: returns strings; the caller prints.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from reconciler.core.schedule import format_age
from reconciler.core.status import SecretStatus, StatusReport

FORMAT_VERSION = 1
"""Fields are only ever added within a version (``age_seconds``, ``rotation_due``, ``kept_by``, …)."""

KEPT_WORDS = {
    "in_use": "in use",
    "rollback_target": "rollback target",
    "running_task": "used by a running task",
    "keep": "kept by spec.keep",
    "none": "kept for no reason (the next apply collects it)",
}


def render_status_json(report: StatusReport) -> str:
    return json.dumps({"format_version": FORMAT_VERSION, **asdict(report)}, indent=2) + "\n"


def render_status_text(report: StatusReport) -> str:
    lines: list[str] = []
    current_set = None
    for item in report.secrets:
        if item.set_name != current_set:
            current_set = item.set_name
            lines.append(f"set {item.set_name}")
        cur = item.current
        users = ", ".join(cur.used_by) or "no service"
        created = cur.created_at[:19] or "?"
        lines.append(
            f"  {item.secret}: {cur.name} (v{cur.version}, created {created}{_age(item)}) used by {users}"
        )
        for old in item.superseded:
            lines.append(f"    {old.name}: {old.note}")
        if item.kept:
            counts = ", ".join(f"{n} {KEPT_WORDS.get(k, k)}" for k, n in sorted(item.kept.items()))
            lines.append(f"    superseded versions present: {counts}")
    if not report.secrets:
        lines.append("No managed secrets.")
    if report.orphaned_sets:
        lines.append(
            "orphaned sets (no loaded manifest; `apply --prune-orphans` collects them): "
            + ", ".join(report.orphaned_sets)
        )
    if report.unmanaged_unreferenced:
        lines.append(
            "unmanaged secrets nothing references (left alone): " + ", ".join(report.unmanaged_unreferenced)
        )
    for name, why in report.unmanaged_referenced:
        lines.append(f"unmanaged secret {name} (left alone): {why}")
    lines += [f"policy: set {g.set_name}: {g.where}" for g in report.governance]
    return "\n".join(lines) + "\n"


def _age(item: SecretStatus) -> str:
    """``, 91 days old, generated; rotation due (every 90d)`` as far as known."""
    text = f", {format_age(item.age_seconds)} old" if item.age_seconds is not None else ""
    if item.generated:
        text += ", generated"
    if item.rotate_every is not None:
        text += (
            f"; rotation due (every {item.rotate_every})"
            if item.rotation_due
            else f"; rotates every {item.rotate_every}"
        )
    return text
