"""Saved plans: a plan written by ``plan --out`` and applied later, exactly, by ``apply --plan``.

A :class:`SavedPlan` is the plan with the :class:`Basis` it was computed from:

* the manifests' revision and a digest of the manifest files (``manifests/digest.py``);
* the fingerprint key id and each value's keyed fingerprint (``set/secret`` → ``hmac-sha256:…``;
  a generated secret has no value yet: ``generate:<charset>:<length>``, how it is to be made);
* the time it was planned at (the swarm's clock), which ``apply --plan`` plans at again, so that
  rotations are judged as they were when the plan was made (one falling due later is the next run's);
* whether orphaned sets were pruned;
* the version index of every observed object the plan touches: the services it updates, the secrets
  it removes and the existing secrets its updates reference.

:func:`moved` compares a basis taken now with the saved one and says, in a few words each, what moved;
``converge.saved_plan_approval`` refuses the plan (exit 1, nothing changed) when anything did, and also
when the plan computed now is not equal to the saved one (a second guard).

The file is JSON (:func:`dumps` / :func:`loads`), versioned (``kind``, ``format_version``), and holds no
value: names, versions, ids, version indexes, reasons and keyed fingerprints, which confirm nothing to
a reader without the key. Pure: no I/O (the CLI reads and writes the file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.core.model import DesiredState, LiveState
from reconciler.core.plan import (
    Action,
    Blocked,
    CreateSecret,
    DeployStack,
    Kept,
    Plan,
    RefChange,
    RemoveSecret,
    StackService,
    UpdateService,
    action_fields,
)

__all__ = ["FORMAT_VERSION", "KIND", "Basis", "SavedPlan", "basis_of", "dumps", "loads", "moved"]

KIND = "swarm-secrets/saved-plan"
FORMAT_VERSION = 1
"""Bumped when a field is renamed, removed or changes meaning; a newer file is refused, not guessed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Basis:
    """What a plan was computed from (see the module docstring)."""

    revision: str | None
    manifests_digest: str
    fingerprint_key_id: str
    values: Mapping[str, str] = field(default_factory=dict)
    """``set/secret`` → keyed fingerprint of its value."""
    prune_orphans: bool = False
    now: float | None = None
    """The time the plan was made at (Unix seconds, the swarm's clock): ``desired.now``."""
    services: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    """service id → (name, version index) of the services the plan updates."""
    secrets: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    """secret id → (name, version index) of the secrets the plan removes or references."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SavedPlan:
    basis: Basis
    plan: Plan


def basis_of(
    desired: DesiredState, live: LiveState, plan: Plan, *, manifests_digest: str, prune_orphans: bool
) -> Basis:
    """The basis of ``plan``, made from ``desired`` against ``live``."""
    secrets = {s.id: s for s in live.secrets}
    by_name = {s.name: s for s in live.secrets}
    touched = {r.secret_id for r in plan.removals}
    touched |= {by_name[c.new].id for u in plan.updates for c in u.changes if c.new in by_name}
    touched |= {by_name[name].id for d in plan.deploys for name in d.pinned if name in by_name}
    return Basis(
        revision=desired.revision,
        manifests_digest=manifests_digest,
        fingerprint_key_id=desired.fingerprint_key_id,
        values={
            f"{s.name}/{x.secret}": f"generate:{x.generator}" if x.generator else x.fingerprint
            for s in desired.sets
            for x in s.secrets
        },
        prune_orphans=prune_orphans,
        now=desired.now,
        services={
            **{u.service_id: (u.service, u.observed_version) for u in plan.updates},
            **{
                s.service_id: (s.service, s.observed_version)
                for d in plan.deploys
                for s in d.services
                if s.service_id
            },
        },
        secrets={i: (secrets[i].name, secrets[i].index) for i in sorted(touched) if i in secrets},
    )


def moved(saved: Basis, now: Basis, live: LiveState) -> list[str]:
    """What changed between ``saved`` and ``now`` (``now`` taken against ``live``), one phrase each."""
    found: list[str] = []
    if saved.manifests_digest != now.manifests_digest:
        found.append("the manifest files changed")
    if saved.revision != now.revision:
        found.append(f"the manifests' revision changed ({saved.revision or '-'} → {now.revision or '-'})")
    if saved.fingerprint_key_id != now.fingerprint_key_id:
        found.append("the fingerprint key changed")
    else:
        for name in sorted(set(saved.values) | set(now.values)):
            if name not in now.values:
                found.append(f"secret {name} is no longer in the manifests")
            elif name not in saved.values:
                found.append(f"secret {name} is new in the manifests")
            elif saved.values[name] != now.values[name]:
                if now.values[name].startswith("generate:"):
                    found.append(f"how {name} is generated changed")
                else:
                    found.append(f"the value of {name} changed")
    if saved.prune_orphans != now.prune_orphans:
        found.append("--prune-orphans differs from the saved plan")
    services = {s.id: s for s in live.services}
    for service_id, (name, index) in sorted(saved.services.items(), key=lambda i: i[1]):
        service = services.get(service_id)
        if service is None:
            found.append(f"service {name} no longer exists")
        elif service.version != index:
            found.append(f"service {name} changed (version {index} → {service.version})")
    secrets = {s.id: s for s in live.secrets}
    for secret_id, (name, index) in sorted(saved.secrets.items(), key=lambda i: i[1]):
        secret = secrets.get(secret_id)
        if secret is None:
            found.append(f"secret {name} no longer exists")
        elif secret.index != index:
            found.append(f"secret {name} changed (version {index} → {secret.index})")
    return found


# --- JSON --------------------------------------------------------------------------------------------


def _change(change: RefChange) -> dict[str, Any]:
    return {
        "path": change.path,
        "set": change.set_name,
        "secret": change.secret,
        "old": list(change.old),
        "new": change.new,
        "target": change.target,
        "uid": change.uid,
        "gid": change.gid,
        "mode": change.mode,
        "reason": change.reason,
    }


def dumps(saved: SavedPlan) -> str:
    """The saved plan as JSON text (sorted keys, so the same plan gives the same file)."""
    basis, plan = saved.basis, saved.plan
    data = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "basis": {
            "revision": basis.revision,
            "manifests_digest": basis.manifests_digest,
            "fingerprint_key_id": basis.fingerprint_key_id,
            "values": dict(basis.values),
            "prune_orphans": basis.prune_orphans,
            "now": basis.now,
            "services": {i: {"name": n, "version": v} for i, (n, v) in basis.services.items()},
            "secrets": {i: {"name": n, "version": v} for i, (n, v) in basis.secrets.items()},
        },
        "plan": {
            "actions": [action_fields(a, change=_change) for a in plan.actions],
            "kept": [
                {
                    "name": k.name,
                    "set": k.set_name,
                    "secret": k.secret,
                    "version": k.version,
                    "reason": k.reason,
                }
                for k in plan.kept
            ],
            "blocked": [{"set": b.set_name, "secret": b.secret, "reason": b.reason} for b in plan.blocked],
            "warnings": list(plan.warnings),
            "orphaned_sets": list(plan.orphaned_sets),
        },
    }
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


class _Reader:
    """Typed access to untrusted JSON: every wrong shape is a ``ValueError`` naming the field."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise ValueError(f"{where} is not an object")
        self.data: dict[str, Any] = data
        self.where = where

    def get(self, key: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
        if key not in self.data:
            raise ValueError(f"{self.where}.{key} is missing")
        value = self.data[key]
        if value is None and optional:
            return None
        # bool is an int: never accept one where a number is meant
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _types(kind)):
            raise ValueError(f"{self.where}.{key} has the wrong type")
        return value

    def text(self, key: str) -> str:
        return str(self.get(key, str))

    def maybe_text(self, key: str) -> str | None:
        value = self.get(key, str, optional=True)
        return None if value is None else str(value)

    def number(self, key: str) -> int:
        return int(self.get(key, int))

    def moment(self, key: str) -> float | None:
        """An optional time in Unix seconds (absent in files written before it was recorded)."""
        if key not in self.data:
            return None
        value = self.get(key, (int, float), optional=True)
        return None if value is None else float(value)

    def texts(self, key: str) -> tuple[str, ...]:
        values = self.get(key, list)
        if not all(isinstance(v, str) for v in values):
            raise ValueError(f"{self.where}.{key} must be a list of strings")
        return tuple(values)

    def mapping(self, key: str) -> dict[str, str]:
        values = self.get(key, dict)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
            raise ValueError(f"{self.where}.{key} must map strings to strings")
        return dict(values)

    def items(self, key: str) -> list[_Reader]:
        return [_Reader(item, f"{self.where}.{key}[{i}]") for i, item in enumerate(self.get(key, list))]

    def objects(self, key: str) -> dict[str, tuple[str, int]]:
        found = {}
        for object_id, body in self.get(key, dict).items():
            entry = _Reader(body, f"{self.where}.{key}.{object_id}")
            found[str(object_id)] = (entry.text("name"), entry.number("version"))
        return found


def _types(kind: type | tuple[type, ...]) -> Sequence[type]:
    return kind if isinstance(kind, tuple) else (kind,)


def _read_change(c: _Reader) -> RefChange:
    return RefChange(
        path=c.text("path"),
        set_name=c.maybe_text("set"),
        secret=c.maybe_text("secret"),
        old=c.texts("old"),
        new=c.maybe_text("new"),
        target=c.text("target"),
        uid=c.text("uid"),
        gid=c.text("gid"),
        mode=c.number("mode"),
        reason=c.text("reason"),
    )


def _read_action(item: _Reader) -> Action:
    kind = item.text("kind")
    if kind == CreateSecret.kind:
        return CreateSecret(
            set_name=item.text("set"),
            secret=item.text("secret"),
            version=item.number("version"),
            name=item.text("name"),
            labels=item.mapping("labels"),
            reason=item.text("reason"),
        )
    if kind == UpdateService.kind:
        return UpdateService(
            service=item.text("service"),
            service_id=item.text("service_id"),
            observed_version=item.number("observed_version"),
            stack=item.maybe_text("stack"),
            reason=item.text("reason"),
            changes=tuple(_read_change(c) for c in item.items("changes")),
        )
    if kind == DeployStack.kind:
        return DeployStack(
            stack=item.text("stack"),
            content=item.text("content"),
            pins=tuple(item.mapping("pins").items()),
            services=tuple(
                StackService(
                    service=s.text("service"),
                    service_id=s.maybe_text("service_id"),
                    observed_version=s.number("observed_version"),
                    changes=tuple(_read_change(c) for c in s.items("changes")),
                )
                for s in item.items("services")
            ),
            reason=item.text("reason"),
        )
    if kind == RemoveSecret.kind:
        return RemoveSecret(
            secret_id=item.text("secret_id"),
            name=item.text("name"),
            set_name=item.text("set"),
            secret=item.text("secret"),
            version=item.number("version"),
            reason=item.text("reason"),
            after=item.texts("after"),
        )
    raise ValueError(f"{item.where}.kind: unknown action kind {kind!r}")


def loads(text: str) -> SavedPlan:
    """A saved plan from :func:`dumps`'s JSON; ``ValueError`` saying what is wrong otherwise."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at line {exc.lineno})") from None
    top = _Reader(raw, "the file")
    if raw.get("kind") != KIND:
        raise ValueError(f"not a saved plan (kind is not {KIND!r})")
    version = top.number("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"format_version {version} is not {FORMAT_VERSION}: plan and apply with the same version"
        )
    b = _Reader(top.get("basis", dict), "basis")
    p = _Reader(top.get("plan", dict), "plan")
    basis = Basis(
        revision=b.maybe_text("revision"),
        manifests_digest=b.text("manifests_digest"),
        fingerprint_key_id=b.text("fingerprint_key_id"),
        values=b.mapping("values"),
        prune_orphans=bool(b.get("prune_orphans", bool)),
        now=b.moment("now"),
        services=b.objects("services"),
        secrets=b.objects("secrets"),
    )
    plan = Plan(
        actions=tuple(_read_action(a) for a in p.items("actions")),
        kept=tuple(
            Kept(
                name=k.text("name"),
                set_name=k.text("set"),
                secret=k.text("secret"),
                version=k.number("version"),
                reason=k.text("reason"),
            )
            for k in p.items("kept")
        ),
        blocked=tuple(
            Blocked(set_name=x.text("set"), secret=x.text("secret"), reason=x.text("reason"))
            for x in p.items("blocked")
        ),
        warnings=p.texts("warnings"),
        orphaned_sets=p.texts("orphaned_sets"),
    )
    return SavedPlan(basis=basis, plan=plan)
