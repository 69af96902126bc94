"""Print a :class:`~reconciler.core.plan.Plan` for people (text), machines (JSON) and pull requests.

A plan holds names, versions, paths and reasons, never a secret value, so every rendering is safe to
post publicly. The fingerprint label is left out of every rendering anyway: it is keyed, but it helps
nobody reading and would let anyone holding the key confirm a guessed value.

JSON shape (``format_version`` 1; fields are only ever added within a version)::

    {
      "format_version": 1,
      "summary": {"create": 1, "update": 1, "remove": 1, "blocked": 0, "kept": 1, "deploy": 0},
      "empty": false,                      # no actions and nothing blocked
      "actions": [                         # execution order: creates, stack deploys, updates, removals
        {"kind": "create_secret", "set": "shop", "secret": "db_password", "version": 2,
         "name": "db_password_v2", "labels": {...},   # every label but the fingerprint
         "reason": "content changed (v1 has a different fingerprint)"},
        {"kind": "update_service", "service": "shop_web", "service_id": "…",
         "observed_version": 42, "stack": null, "reason": "1 reference changes (1 replaced)",
         "changes": [
           {"op": "replace",               # add | replace | remove
            "path": "/run/secrets/db_password",   # normalized in-container path
            "target": "db_password",       # as the manifest writes it (removals: as the service had it)
            "set": "shop", "secret": "db_password",   # null for references that are not ours
            "old": "db_password_v1",       # null for add; ", "-joined when several refs share the path
            "new": "db_password_v2",       # null for remove
            "uid": "0", "gid": "0", "mode": "0440",   # mode as an octal string
            "reason": "rotate to v2 (content changed)"}]},
        {"kind": "deploy_stack", "stack": "shop",   # docker stack deploy with the pinning override
         "content": "sha256:…",            # digest of the compose files and variables
         "pins": {"db_password": "db_password_v2"},   # compose secret -> version
         "reason": "compose content changed; new secret versions (db_password_v2)",
         "services": [{"service": "shop_db", "service_id": "…",   # null: the deploy creates it
                       "changes": [...]}]},   # as an update's: what the deploy changes in its refs
        {"kind": "remove_secret", "secret_id": "…", "name": "db_password_v0", "set": "shop",
         "secret": "db_password", "version": 0, "reason": "superseded by v2 and no longer referenced",
         "after": []}                      # services whose rollout frees it first (it is only
                                           # their rollback target now); removed after them
      ],
      "kept": [{"name": "db_password_v1", "set": "shop", "secret": "db_password", "version": 1,
                "reason": "rollback target of shop_web (PreviousSpec)"}],
      "blocked": [{"set": "shop", "secret": "api_key", "reason": "…"}],
      "warnings": ["service 'shop_worker' not found; skipped (granted db_password)"],
      "orphaned_sets": ["old"],
      "policy": [{"set": "shop", "rule": 1,   # with --policy: the rule governing each set
                  "where": "policy rule 1 (policy.yaml:5)"}]      # [] without a policy
    }

This module is pure: no I/O (it returns strings; the caller prints), no terminal detection (the caller
decides ``color``), no docker, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.core.model import LABEL_FINGERPRINT
from reconciler.core.plan import (
    CreateSecret,
    DeployStack,
    Kept,
    Plan,
    RefChange,
    RemoveSecret,
    UpdateService,
    action_fields,
)

__all__ = [
    "FORMAT_VERSION",
    "md_escape",
    "plan_to_dict",
    "render_json",
    "render_markdown",
    "render_text",
    "summary_line",
]

FORMAT_VERSION = 1
"""Version of the JSON shape; bumped only when a field is renamed, removed or changes meaning."""

MARKDOWN_MAX_CHARS = 60_000
"""Default cap for Markdown: under GitHub's 65,536-character comment limit with room for a wrapper."""

_DEFAULT_OWNER = ("0", "0", 0o444)

# --- shared -----------------------------------------------------------------------------------------


def _op(change: RefChange) -> str:
    return change.op


def _old(change: RefChange) -> str | None:
    """The replaced names as the JSON shape has them: ``", "``-joined, null for an add."""
    return ", ".join(change.old) or None


def _public_labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in sorted(labels.items()) if k != LABEL_FINGERPRINT}


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def summary_line(plan: Plan) -> str:
    """``Plan: 1 to create, 2 services to update, 1 to remove.`` or the no-changes sentence."""
    if plan.empty:
        return "No changes. The swarm matches the manifests."
    deploys = f"{_plural(len(plan.deploys), 'stack', 'stacks')} to deploy, " if plan.deploys else ""
    line = (
        f"Plan: {len(plan.creates)} to create, {deploys}"
        f"{_plural(len(plan.updates), 'service', 'services')} to update, {len(plan.removals)} to remove"
    )
    if plan.blocked:
        line += f", {len(plan.blocked)} blocked"
    return line + "."


# --- text -------------------------------------------------------------------------------------------

_GREEN, _YELLOW, _RED, _DIM, _BOLD_RED, _RESET = (
    "\x1b[32m",
    "\x1b[33m",
    "\x1b[31m",
    "\x1b[2m",
    "\x1b[1;31m",
    "\x1b[0m",
)
_CHANGE_SYMBOL = {"add": "+", "replace": "~", "remove": "-"}
_CHANGE_COLOUR = {"add": _GREEN, "replace": _YELLOW, "remove": _RED}


def _owner_note(change: RefChange) -> str:
    """``[uid 1000, gid 1000, mode 0440]`` when the file is not root-owned 0444, else empty."""
    if change.new is None or (change.uid, change.gid, change.mode) == _DEFAULT_OWNER:
        return ""
    return f" [uid {change.uid}, gid {change.gid}, mode {change.mode:04o}]"


def _change_text(change: RefChange) -> str:
    op = _op(change)
    old = _old(change)
    names = {"add": change.new, "remove": old}.get(op) or f"{old} → {change.new}"
    return f"{_CHANGE_SYMBOL[op]} {change.path}: {names}{_owner_note(change)} ({change.reason})"


def render_text(plan: Plan, *, color: bool = False) -> str:
    """The plan for a terminal: one line per action (updates with one indented line per reference)."""

    def paint(colour: str, text: str) -> str:
        return f"{colour}{text}{_RESET}" if color else text

    lines: list[str] = []
    for action in plan.actions:
        if isinstance(action, CreateSecret):
            head = f"+ create {action.name} ({action.set_name}/{action.secret} v{action.version})"
            lines.append(paint(_GREEN, f"{head}: {action.reason}"))
        elif isinstance(action, DeployStack):
            lines.append(paint(_YELLOW, f"~ deploy stack {action.stack}: {action.reason}"))
            lines += [paint(_DIM, f"    {line}") for line in _deploy_lines(action)]
        elif isinstance(action, UpdateService):
            stack = f" (stack {action.stack})" if action.stack else ""
            lines.append(paint(_YELLOW, f"~ update service {action.service}{stack}: {action.reason}"))
            lines += [paint(_CHANGE_COLOUR[_op(c)], f"    {_change_text(c)}") for c in action.changes]
        else:
            head = f"- remove {action.name} ({action.set_name}/{action.secret} v{action.version})"
            lines.append(paint(_RED, f"{head}: {action.reason}"))
    lines += [paint(_BOLD_RED, f"! blocked {b.set_name}/{b.secret}: {b.reason}") for b in plan.blocked]
    lines += [
        paint(_DIM, f"# kept {k.name} ({k.set_name}/{k.secret} v{k.version}): {k.reason}") for k in plan.kept
    ]
    lines += [paint(_YELLOW, f"warning: {w}") for w in plan.warnings]
    lines += [paint(_DIM, f"policy: set {g.set_name}: {g.where}") for g in plan.governance]
    if lines:
        lines.append("")
    lines.append(summary_line(plan))
    return "\n".join(lines)


def _deploy_lines(action: DeployStack) -> list[str]:
    """One line per service of a stack deploy (with its reference changes), then the pins."""
    lines = []
    for service in action.services:
        if service.service_id is None:
            lines.append(f"+ {service.service}: created by the deploy")
        elif not service.changes:
            lines.append(f"~ {service.service}: updated once, with no change to its managed secrets")
        else:
            lines.append(f"~ {service.service}: updated once, with:")
            lines += [f"    {_change_text(c)}" for c in service.changes]
    if action.pins:
        lines.append("pins " + ", ".join(f"{key} → {name}" for key, name in action.pins))
    return lines


# --- JSON -------------------------------------------------------------------------------------------


def _change_dict(change: RefChange) -> dict[str, Any]:
    return {
        "op": _op(change),
        "path": change.path,
        "target": change.target,
        "set": change.set_name,
        "secret": change.secret,
        "old": _old(change),
        "new": change.new,
        "uid": change.uid,
        "gid": change.gid,
        "mode": f"{change.mode:04o}",
        "reason": change.reason,
    }


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The JSON shape documented in this module's docstring, as plain dicts and lists."""
    return {
        "format_version": FORMAT_VERSION,
        "summary": {
            "create": len(plan.creates),
            "update": len(plan.updates),
            "remove": len(plan.removals),
            "blocked": len(plan.blocked),
            "kept": len(plan.kept),
            "deploy": len(plan.deploys),
        },
        "empty": plan.empty,
        "actions": [action_fields(a, change=_change_dict, labels=_public_labels) for a in plan.actions],
        "kept": [
            {"name": k.name, "set": k.set_name, "secret": k.secret, "version": k.version, "reason": k.reason}
            for k in plan.kept
        ],
        "blocked": [{"set": b.set_name, "secret": b.secret, "reason": b.reason} for b in plan.blocked],
        "warnings": list(plan.warnings),
        "orphaned_sets": list(plan.orphaned_sets),
        "policy": [{"set": g.set_name, "rule": g.rule, "where": g.where} for g in plan.governance],
    }


def render_json(plan: Plan) -> str:
    """:func:`plan_to_dict` as indented JSON (UTF-8 text, no trailing newline)."""
    return json.dumps(plan_to_dict(plan), indent=2, ensure_ascii=False)


# --- Markdown ---------------------------------------------------------------------------------------

_MD_SPECIAL = frozenset("\\`*_|<>[]~#&")


def md_escape(text: str) -> str:
    """``text`` as literal Markdown inline text, safe inside a table cell (one line, ``|`` escaped)."""
    flat = " ".join(text.split("\n"))
    return "".join(f"\\{c}" if c in _MD_SPECIAL else c for c in flat)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Section:
    """A titled list of items; tables repeat their header lines in ``head``."""

    kind: str
    """``action``, ``blocked``, ``warning`` or ``kept``: what a truncated item counts as."""
    head: str
    items: tuple[str, ...]
    tail: str = ""

    def render(self, count: int | None = None) -> str:
        items = self.items if count is None else self.items[:count]
        return self.head + "".join(items) + self.tail


_COLUMNS = ("Secret", "Set", "Version", "Reason")
_TABLE_HEAD = f"| {' | '.join(_COLUMNS)} |\n|{'---|' * len(_COLUMNS)}\n"


def _rows(items: Sequence[CreateSecret | RemoveSecret | Kept]) -> tuple[str, ...]:
    cells = ((i.name, i.set_name, f"v{i.version}", i.reason) for i in items)
    return tuple("| " + " | ".join(md_escape(cell) for cell in row) + " |\n" for row in cells)


def _update_item(update: UpdateService) -> str:
    stack = f" (stack {md_escape(update.stack)})" if update.stack else ""
    lines = [f"- **{md_escape(update.service)}**{stack}: {md_escape(update.reason)}\n"]
    for change in update.changes:
        text = _change_text(change)
        lines.append(f"  - `{text[0]}` {md_escape(text[2:])}\n")
    return "".join(lines)


def _sections(plan: Plan) -> list[_Section]:
    sections: list[_Section] = []
    if plan.blocked:
        sections.append(
            _Section(
                kind="blocked",
                head=f"#### Blocked ({len(plan.blocked)}): needs a person\n\n",
                items=tuple(
                    f"- **{md_escape(b.set_name)}/{md_escape(b.secret)}**: {md_escape(b.reason)}\n"
                    for b in plan.blocked
                ),
                tail="\n",
            )
        )
    if plan.warnings:
        sections.append(
            _Section(
                kind="warning",
                head="> **Warnings**\n>\n",
                items=tuple(f"> - {md_escape(w)}\n" for w in plan.warnings),
                tail="\n",
            )
        )
    if plan.creates:
        head = f"#### Create ({len(plan.creates)})\n\n{_TABLE_HEAD}"
        sections.append(_Section(kind="action", head=head, items=_rows(plan.creates), tail="\n"))
    if plan.deploys:
        sections.append(
            _Section(
                kind="action",
                head=f"#### Deploy stacks ({len(plan.deploys)})\n\n",
                items=tuple(
                    f"- **{md_escape(d.stack)}**: {md_escape(d.reason)}\n"
                    + "".join(f"  - {md_escape(line)}\n" for line in _deploy_lines(d))
                    for d in plan.deploys
                ),
                tail="\n",
            )
        )
    if plan.updates:
        sections.append(
            _Section(
                kind="action",
                head=f"#### Update services ({len(plan.updates)})\n\n",
                items=tuple(_update_item(u) for u in plan.updates),
                tail="\n",
            )
        )
    if plan.removals:
        head = f"#### Remove ({len(plan.removals)})\n\n{_TABLE_HEAD}"
        sections.append(_Section(kind="action", head=head, items=_rows(plan.removals), tail="\n"))
    if plan.kept:
        # A blank line after <summary> lets GitHub render the Markdown table inside the HTML block.
        head = f"<details><summary>Kept versions ({len(plan.kept)})</summary>\n\n{_TABLE_HEAD}"
        sections.append(_Section(kind="kept", head=head, items=_rows(plan.kept), tail="\n</details>\n"))
    return sections


def render_markdown(plan: Plan, *, max_chars: int = MARKDOWN_MAX_CHARS) -> str:
    """The plan as a pull-request comment of at most ``max_chars`` characters.

    When the full rendering is longer, it is summarised and says so: first the kept versions are
    reduced to a count, then the lists are cut with "… and N more actions (run `swarm-secrets plan` for
    the full list)".
    """
    head = f"### swarm-secrets plan\n\n**{md_escape(summary_line(plan))}**\n\n"
    if plan.governance:
        rules = "; ".join(f"{g.set_name}: {g.where}" for g in plan.governance)
        head += f"_Policy: {md_escape(rules)}_\n\n"
    sections = _sections(plan)
    full = head + "".join(s.render() for s in sections)
    if len(full) <= max_chars:
        return full.rstrip("\n") + "\n"

    without_kept = [s for s in sections if s.kind != "kept"]
    kept_line = f"{_plural(len(plan.kept), 'superseded version', 'superseded versions')} kept.\n\n"
    kept_line = kept_line if plan.kept else ""
    note = f"_Summarised to stay under {max_chars:,} characters; kept versions are only counted._\n\n"
    text = head + note + "".join(s.render() for s in without_kept) + kept_line
    if len(text) <= max_chars:
        return text.rstrip("\n") + "\n"

    note = (
        f"_Summarised to stay under {max_chars:,} characters: lists are cut short; "
        "run `swarm-secrets plan` for the full plan._\n\n"
    )
    reserve = 200  # the "… and N more" line, whatever N is
    budget = max_chars - len(head) - len(note) - len(kept_line) - reserve
    parts: list[str] = []
    omitted: dict[str, int] = {"action": 0, "blocked": 0, "warning": 0}
    full_stop = False
    for section in without_kept:
        shown = 0
        if not full_stop:
            used = len(section.head) + len(section.tail)
            for item in section.items:
                if used + len(item) > budget:
                    break
                used += len(item)
                shown += 1
            full_stop = shown < len(section.items)
            if shown:
                parts.append(section.render(shown))
                budget -= used
        omitted[section.kind] += len(section.items) - shown
    more = [
        _plural(omitted[kind], f"more {noun}", f"more {noun}s")
        for kind, noun in (("action", "action"), ("blocked", "blocked secret"), ("warning", "warning"))
        if omitted[kind]
    ]
    if more:
        parts.append(f"… and {' and '.join(more)} (run `swarm-secrets plan` for the full list)\n\n")
    text = head + note + "".join(parts) + kept_line
    return text.rstrip("\n")[: max_chars - 1] + "\n"
