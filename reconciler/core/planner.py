"""Decide what to change: ``plan(desired, live) -> Plan``, a pure diff of manifests against the swarm.

What it decides, in this order:

1. **Versions.** For each desired logical secret, the *current* version is the highest managed version
   of that set whose fingerprint label equals the desired fingerprint (for a generated secret: whose
   generator label equals the manifest's ``generate`` parameters). Without one, a
   :class:`CreateSecret` makes ``<secret>_v<N>`` with N one past the highest version of that secret
   in *any* set (names are global), unless an object already holds that name case-insensitively: then
   the secret is :class:`Blocked` and every reference to it is left as it is. A generated secret also
   gets a new version when its ``rotate.every`` has passed since the current one was created
   (``desired.now``, the swarm's clock; see ``core/schedule.py``) or a rotation was forced
   (``desired.forced``); for any other source a due rotation is a warning (the tool cannot invent the
   value). The create of a generated version carries no value and no fingerprint: the executor has the
   value generated when it creates the version.
2. **References.** One :class:`UpdateService` per service, holding every :class:`RefChange`: add what is
   granted and missing, replace what points elsewhere or has the wrong owner/mode, collapse duplicate
   references at one path, and revoke references to a loaded set's secrets the manifests no longer
   grant (least privilege). Unmanaged secrets and other sets' secrets at paths no grant names stay.
3. **Collection.** Every superseded version of a loaded set is removed unless something may still need
   it: a service's Spec or PreviousSpec (the rollback trap, moby/swarmkit#2509), a task not yet shut
   down, or the set's ``keep``. Those become :class:`Kept` with the reason.

Orphaned sets (managed objects whose set no manifest declares) are reported and left alone unless
``prune_orphans``: then they are revoked and collected like a deleted secret.

**Stacks this run deploys** (``desired.stacks``: a ``kind: Stack`` manifest, or ``stack deploy``) get
no :class:`UpdateService`: the reference changes of their services go into one :class:`DeployStack`
per stack (``core/stacks.py`` decides whether it is needed), whose override pins the versions, so a
release that also rotates a value updates each service once.

Held-back sets (``held_back``: the long-running loop could not load them, their manifests fail) are
neither desired nor orphaned: nothing of them is revoked, collected or pruned, and a path of a service
that mounts one of their versions is left as it is, even if a loaded set grants that path now (a warning
says so; were both sets loaded, the clash would be reported).

How a :class:`RefChange` applies to a service is defined once, in ``core/refs.py``. The planner uses
that rule to predict the services after its own updates, so that collection is exact: a version that
only the PreviousSpec of a service this plan updates references stops being a rollback target once
the update is made (the old Spec becomes the new PreviousSpec). It is planned as a removal *after*
that rollout (:attr:`RemoveSecret.after`), which the executor re-checks against a fresh observation.

This module is pure: no docker, no subprocess, no clock, no I/O, no logging of values (it never sees
one). Output order is deterministic: by set, secret, service, path, version.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

from reconciler.core import schedule
from reconciler.core.collect import Cause, Scope, collect, current_version
from reconciler.core.fingerprint import fingerprint_key_id
from reconciler.core.model import (
    LABEL_FINGERPRINT,
    LABEL_GENERATOR,
    LABEL_MANAGED,
    LABEL_REVISION,
    LABEL_SECRET,
    LABEL_SET,
    LABEL_VERSION,
    MAX_OBJECT_NAME,
    DesiredSecret,
    DesiredSet,
    DesiredState,
    LiveSecret,
    LiveService,
    LiveState,
    SecretRef,
    ServiceGrant,
    version_name,
)
from reconciler.core.plan import (
    STACK_DRIFT,
    Action,
    Blocked,
    CreateSecret,
    DeployStack,
    Plan,
    RefChange,
    UpdateService,
)
from reconciler.core.refs import apply_ref_changes
from reconciler.core.stacks import STACK_NAMESPACE_LABEL, covered_services, plan_deploys

__all__ = ["fingerprint_key_id", "forced_versions", "plan", "predict"]


# _Current and _Wanted are NamedTuples rather than frozen dataclasses: a plan makes one of each per
# declared secret, and a frozen dataclass costs twice as much to build.


class _Current(NamedTuple):
    """The version a logical secret should be referenced at: existing, or created by this plan."""

    version: int
    name: str
    secret_id: str | None
    """None when this plan creates the version."""
    rotation: str
    """Why a new version exists (for the reason of service changes); empty for an existing one."""


class _Wanted(NamedTuple):
    """One granted path of one service, resolved to the version it should reference."""

    grant: ServiceGrant
    set_name: str
    secret: str
    current: _Current | None
    """None when the secret is blocked: whatever the service references at this path stays."""


class _Index:
    """Lookups over the live secrets, built once per plan."""

    def __init__(self, live: LiveState, loaded: frozenset[str]) -> None:
        self.by_id: dict[str, LiveSecret] = {s.id: s for s in live.secrets}
        self._live = live
        self._names: dict[str, LiveSecret] | None = None
        # (set, secret) -> versions, oldest first; a managed secret without set or secret label is
        # malformed and belongs to nobody (never touched).
        self.versions: dict[tuple[str, str], list[LiveSecret]] = defaultdict(list)
        self.highest: dict[str, int] = {}
        self.malformed: list[LiveSecret] = []
        for secret in live.secrets:
            if not secret.managed:
                continue
            if not secret.set_name or not secret.secret:
                self.malformed.append(secret)
                continue
            self.versions[(secret.set_name, secret.secret)].append(secret)
            number = _version(secret)
            if number > self.highest.get(secret.secret, 0):
                self.highest[secret.secret] = number
        for versions in self.versions.values():
            if len(versions) > 1:
                versions.sort(key=lambda s: (_version(s), s.name, s.id))
        self.orphan_counts: dict[str, int] = defaultdict(int)
        for (set_name, _), versions in self.versions.items():
            if set_name not in loaded:
                self.orphan_counts[set_name] += len(versions)

    @property
    def names(self) -> dict[str, LiveSecret]:
        """Live secrets by lower-cased name (Swarm names are unique case-insensitively); built when
        a version is to be created, so a plan without creates never needs it."""
        if self._names is None:
            self._names = {s.name.lower(): s for s in self._live.secrets}
        return self._names

    def ours(self, secret_id: str, sets: frozenset[str]) -> LiveSecret | None:
        """The live secret behind a reference when it is a well-formed managed secret of ``sets``."""
        secret = self.by_id.get(secret_id)
        if secret is None or not secret.managed or not secret.secret or secret.set_name not in sets:
            return None
        return secret


def _version(secret: LiveSecret) -> int:
    # Only called for managed secrets, whose version label is numeric by definition.
    return secret.version or 0


def plan(
    desired: DesiredState,
    live: LiveState,
    *,
    prune_orphans: bool = False,
    held_back: frozenset[str] = frozenset(),
) -> Plan:
    """Everything needed to make the swarm match ``desired``, each step with its reason; the sets in
    ``held_back`` are left exactly as they are (see the module docstring)."""
    loaded = frozenset(s.name for s in desired.sets)
    index = _Index(live, loaded | held_back)
    warnings: list[str] = [
        f"secret '{s.name}' (id {s.id}) is labelled managed but has no set or secret label; left alone"
        for s in sorted(index.malformed, key=lambda s: (s.name, s.id))
    ]
    orphans = tuple(sorted(index.orphan_counts))
    if not prune_orphans:
        warnings += [
            f"set '{name}' has {index.orphan_counts[name]} managed "
            f"secret{'' if index.orphan_counts[name] == 1 else 's'} but no loaded manifest; "
            "left alone (use --prune-orphans to revoke and collect)"
            for name in orphans
        ]
    pruned = frozenset(orphans) if prune_orphans else frozenset()

    currents, creates, blocked, due = _resolve_versions(desired, index)
    warnings += due
    blocked_keys = frozenset((b.set_name, b.secret) for b in blocked)
    covered = frozenset(covered_services(desired.stacks))
    updates, service_warnings, stack_changes, names = _plan_services(
        desired, live, index, currents, loaded, pruned, blocked_keys, covered, held_back - loaded
    )
    deploys, stack_warnings = plan_deploys(desired.stacks, live, stack_changes, names)
    after = predict(live, updates, creates, deploys)
    removals, kept = collect(_scopes(desired, index, currents, blocked_keys, pruned), live, after=after)
    actions: tuple[Action, ...] = (*creates, *deploys, *updates, *removals)
    return Plan(
        actions=actions,
        kept=kept,
        blocked=tuple(blocked),
        warnings=tuple(warnings + service_warnings + list(stack_warnings)),
        orphaned_sets=orphans,
    )


# --- 1. versions ------------------------------------------------------------------------------------


def _resolve_versions(
    desired: DesiredState, index: _Index
) -> tuple[dict[tuple[str, str], _Current], list[CreateSecret], list[Blocked], list[str]]:
    """(current version per secret, creates, blocked secrets, warnings about due rotations)."""
    currents: dict[tuple[str, str], _Current] = {}
    creates: list[CreateSecret] = []
    blocked: list[Blocked] = []
    warnings: list[str] = []
    highest = dict(index.highest)  # grows as this plan allocates versions, so two sets never collide
    planned_names: set[str] = set()
    for dset in sorted(desired.sets, key=lambda s: s.name):
        for declared in sorted(dset.secrets, key=lambda s: s.secret):
            key = (dset.name, declared.secret)
            versions = index.versions.get(key, [])
            found = current_version(versions, declared.fingerprint, generator=declared.generator)
            due = _rotation_due(desired, declared, found) if found is not None else None
            if found is not None and (due is None or declared.generator is None):
                if due is not None:  # the tool cannot invent a sourced value: say so, change nothing
                    warnings.append(
                        f"secret {dset.name}/{declared.secret}: rotation is due: {due.detail}; "
                        "swarm-secrets cannot make this value: change it at its source, then apply"
                    )
                currents[key] = _Current(
                    version=_version(found), name=found.name, secret_id=found.id, rotation=""
                )
                continue
            number = highest.get(declared.secret, 0) + 1
            name = version_name(declared.secret, number)
            problem = _name_problem(name, index, planned_names)
            if problem:
                blocked.append(Blocked(set_name=dset.name, secret=declared.secret, reason=problem))
                continue
            highest[declared.secret] = number
            planned_names.add(name.lower())
            if due is not None:
                reason, rotation = f"{due.cause}: {due.detail}", due.cause
            else:
                reason, rotation = _create_reason(declared, versions, number, desired.fingerprint_key_id)
            creates.append(
                CreateSecret(
                    set_name=dset.name,
                    secret=declared.secret,
                    version=number,
                    name=name,
                    labels=_labels(desired, dset, declared, number),
                    reason=reason,
                )
            )
            currents[key] = _Current(version=number, name=name, secret_id=None, rotation=rotation)
    return currents, creates, blocked, warnings


@dataclass(frozen=True, slots=True, kw_only=True)
class _Due:
    """Why the current version of a secret is to be replaced although its value did not change."""

    cause: str
    """``scheduled rotation`` or ``forced rotation`` (the reason of the services' changes)."""
    detail: str
    """``v3 is 91 days old, every 90d``."""


def _rotation_due(desired: DesiredState, declared: DesiredSecret, current: LiveSecret) -> _Due | None:
    """Why ``current`` is to be replaced on schedule or by a forced rotation; None when it stays."""
    number = _version(current)
    forced = desired.forced.get((declared.set_name, declared.secret))
    if declared.generator is not None and forced is not None and number <= forced:
        return _Due(cause="forced rotation", detail=f"replaces v{number} (swarm-secrets rotate)")
    rotate = declared.rotate
    if rotate is None or not schedule.rotation_due(rotate, current, desired.now):
        return None
    age = schedule.format_age(schedule.age(current, desired.now) or 0.0)
    return _Due(cause="scheduled rotation", detail=f"v{number} is {age} old, every {rotate.text}")


def forced_versions(
    desired: DesiredState, live: LiveState, secrets: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """For :attr:`DesiredState.forced`: (set, secret) → the number of the version of each generated
    secret that is current in ``live`` (0 when it has none yet), which a forced rotation replaces."""
    wanted = set(secrets)
    found: dict[tuple[str, str], int] = {}
    for dset in desired.sets:
        for declared in dset.secrets:
            key = (dset.name, declared.secret)
            if key not in wanted or declared.generator is None:
                continue
            versions = [s for s in live.secrets if s.managed and (s.set_name, s.secret) == key]
            current = current_version(versions, None, generator=declared.generator)
            found[key] = 0 if current is None else _version(current)
    return found


def _name_problem(name: str, index: _Index, planned: set[str]) -> str:
    if len(name) > MAX_OBJECT_NAME:
        return f"secret name '{name}' would exceed {MAX_OBJECT_NAME} characters; shorten the secret name"
    if name.lower() in planned:
        return f"secret name '{name}' is created for another set in this plan; rename one of the secrets"
    holder = index.names.get(name.lower())
    if holder is None:
        return ""
    if holder.managed and holder.set_name:
        owner = f"a secret of set '{holder.set_name}' ('{holder.name}', id {holder.id})"
    else:
        owner = f"an unmanaged secret (id {holder.id})"
    # Swarm names are unique case-insensitively, so `Db_Password_v3` blocks `db_password_v3`.
    return f"secret name '{name}' is taken by {owner}; rename or remove it"


def _create_reason(
    declared: DesiredSecret, versions: Sequence[LiveSecret], number: int, key_id: str
) -> tuple[str, str]:
    """(reason of the create, short cause for the services that rotate to it)."""
    if not versions:
        made = f"; generated as {declared.generator}" if declared.generator is not None else ""
        if number > 1:
            return (
                f"new secret (v{number}: {declared.secret} has versions up to v{number - 1} in other "
                f"sets{made})",
                "new secret",
            )
        return f"new secret ({made[2:]})" if made else "new secret", "new secret"
    latest = versions[-1]
    if declared.generator is not None:
        if latest.generator is None:
            return f"the value is now generated (v{_version(latest)} came from a source)", "now generated"
        return (
            f"generator changed (v{_version(latest)} was made as {latest.generator}, "
            f"the manifest asks for {declared.generator})",
            "generator changed",
        )
    if latest.generator is not None and latest.fingerprint is None:
        return (
            f"the value now comes from the manifest's source (v{_version(latest)} was generated)",
            "new source",
        )
    wanted_key = key_id or fingerprint_key_id(declared.fingerprint)
    live_key = fingerprint_key_id(latest.fingerprint)
    if live_key is None:
        return f"v{_version(latest)} has no usable fingerprint label; cannot compare", "new version"
    if live_key != wanted_key:
        return (
            f"fingerprint key changed; cannot compare with v{_version(latest)}",
            "fingerprint key changed",
        )
    return f"content changed (v{_version(latest)} has a different fingerprint)", "content changed"


def _labels(desired: DesiredState, dset: DesiredSet, declared: DesiredSecret, number: int) -> dict[str, str]:
    labels = dict(declared.labels)
    # Ours last: a user label can never forge ownership or the version.
    labels.update(
        {
            LABEL_MANAGED: "true",
            LABEL_SET: dset.name,
            LABEL_SECRET: declared.secret,
            LABEL_VERSION: str(number),
        }
    )
    # A generated value is never fingerprinted: its version records how it was made instead.
    if declared.generator is not None:
        labels[LABEL_GENERATOR] = declared.generator
    else:
        labels[LABEL_FINGERPRINT] = declared.fingerprint
    if desired.revision:
        labels[LABEL_REVISION] = desired.revision
    return dict(sorted(labels.items()))


# --- 2. service references --------------------------------------------------------------------------


def _plan_services(
    desired: DesiredState,
    live: LiveState,
    index: _Index,
    currents: Mapping[tuple[str, str], _Current],
    loaded: frozenset[str],
    pruned: frozenset[str],
    blocked: frozenset[tuple[str, str]],
    covered: frozenset[str] = frozenset(),
    held_back: frozenset[str] = frozenset(),
) -> tuple[list[UpdateService], list[str], dict[str, tuple[RefChange, ...]], dict[tuple[str, str], str]]:
    """(updates, warnings, reference changes of the services a stack deploy writes, the version wanted
    at each granted (service, path))."""
    wanted_by_service, warnings = _wanted(desired, currents)
    names = (
        {
            (service, path): want.current.name
            for service, paths in wanted_by_service.items()
            for path, want in paths.items()
            if want.current is not None
        }
        if desired.stacks  # only a stack's deploy pins them
        else {}
    )
    services = {s.name: s for s in live.services}
    for name in sorted(set(wanted_by_service) - set(services) - covered):
        granted = sorted({w.secret for w in wanted_by_service[name].values()})
        warnings.append(f"service '{name}' not found; skipped (granted {', '.join(granted)})")
    # A paused rollout matches the manifest on paper but runs nothing new: say so even when the plan
    # is otherwise empty, or a failed rotation would look converged.
    for name in sorted(set(wanted_by_service) & set(services)):
        state = services[name].update_state
        if state in ("paused", "rollback_paused"):
            warnings.append(
                f"service '{name}': its last rollout is {state.replace('_', ' ')}; find the cause with "
                f"`docker service ps {name}`, then `docker service update --rollback {name}` or re-run apply"
            )

    updates: list[UpdateService] = []
    stack_changes: dict[str, tuple[RefChange, ...]] = {}
    for service in sorted(live.services, key=lambda s: (s.name, s.id)):
        wanted: Mapping[str, _Wanted] = wanted_by_service.get(service.name, {})
        if held_back and wanted:
            wanted = _spare_held_back(service, wanted, index, held_back, warnings)
        changes = _service_changes(service, wanted, index, loaded, pruned, blocked)
        if service.name in covered:
            stack_changes[service.name] = changes  # the stack's deploy makes them (core/stacks.py)
            continue
        if not changes:
            continue
        updates.append(
            UpdateService(
                service=service.name,
                service_id=service.id,
                observed_version=service.version,
                changes=changes,
                stack=service.stack,
                reason=_update_summary(changes),
            )
        )
        if service.stack:
            news = sorted({c.new for c in changes if c.new})
            fix = (
                f"deploy it with `swarm-secrets stack deploy` (or a `kind: Stack` manifest), or point the "
                f"stack's external secrets at {', '.join(news)}"
                if news
                else "drop the revoked secrets from its compose file"
            )
            warnings.append(
                f"service '{service.name}' belongs to stack '{service.stack}': a `docker stack deploy` "
                f"of that stack would revert this change; {fix}"
            )
        if service.updating:
            warnings.append(
                f"service '{service.name}' has a rollout in progress (state '{service.update_state}'); "
                "this update starts a new one"
            )
    return updates, warnings, stack_changes, names


def _spare_held_back(
    service: LiveService,
    wanted: Mapping[str, _Wanted],
    index: _Index,
    held_back: frozenset[str],
    warnings: list[str],
) -> Mapping[str, _Wanted]:
    """``wanted`` without the paths where ``service`` mounts a version of a held-back set (a warning
    for each): those stay as they are until that set loads again."""
    spared: dict[str, _Wanted] = dict(wanted)
    for ref in sorted(service.refs, key=lambda r: (r.path, r.secret_name)):
        held = index.ours(ref.secret_id, held_back)
        if held is None or ref.path not in spared:
            continue
        want = spared.pop(ref.path)
        warnings.append(
            f"service '{service.name}': {ref.path} mounts {held.name} of set '{held.set_name}', whose "
            f"manifests fail (held back); left as it is, not given {want.set_name}/{want.secret}, until "
            f"set '{held.set_name}' loads again"
        )
    return spared


def _wanted(
    desired: DesiredState, currents: Mapping[tuple[str, str], _Current]
) -> tuple[dict[str, dict[str, _Wanted]], list[str]]:
    """service -> normalized path -> what it should reference there; first grant (by set, secret) wins."""
    wanted: dict[str, dict[str, _Wanted]] = defaultdict(dict)
    warnings: list[str] = []
    for dset in sorted(desired.sets, key=lambda s: s.name):
        for declared in sorted(dset.secrets, key=lambda s: s.secret):
            grants = declared.grants
            if len(grants) > 1:
                grants = tuple(
                    sorted(grants, key=lambda g: (g.service, g.path, g.uid, g.gid, g.mode, g.target))
                )
            for grant in grants:
                paths = wanted[grant.service]
                path = grant.path
                first = paths.get(path)
                if first is not None:
                    if first.grant != grant or (first.set_name, first.secret) != (dset.name, declared.secret):
                        warnings.append(
                            f"service '{grant.service}': {grant.path} is granted twice "
                            f"({first.set_name}/{first.secret} and {dset.name}/{declared.secret}); "
                            f"using {first.set_name}/{first.secret}"
                        )
                    continue
                paths[path] = _Wanted(
                    grant=grant,
                    set_name=dset.name,
                    secret=declared.secret,
                    current=currents.get((dset.name, declared.secret)),
                )
    return wanted, warnings


def _service_changes(
    service: LiveService,
    wanted: Mapping[str, _Wanted],
    index: _Index,
    loaded: frozenset[str],
    pruned: frozenset[str],
    blocked: frozenset[tuple[str, str]],
) -> tuple[RefChange, ...]:
    """``blocked`` secrets keep every reference they have, wherever it is."""
    by_path: dict[str, list[SecretRef]] = defaultdict(list)
    for ref in service.refs:
        by_path[ref.path].append(ref)
    changes: list[RefChange] = []
    for path in sorted(by_path.keys() | wanted.keys()):
        refs = by_path.get(path, [])
        want = wanted.get(path)
        if want is not None:
            current = want.current
            if current is None or (len(refs) == 1 and _unchanged(refs[0], want.grant, current)):
                continue  # the common case, checked before any reason text is built
            change = _wanted_change(service, path, refs, want, current, index)
            if change is not None:
                changes.append(change)
            continue
        # Not granted here: revoke our loaded sets' references (and pruned orphans'); leave the rest.
        # A blocked secret keeps even these: were its target moved, revoking the old path while the new
        # one waits for the blocked version would cut the service off.
        ours = sorted(
            (r for r in refs if _revocable(index.ours(r.secret_id, loaded | pruned), blocked)),
            key=lambda r: (r.secret_name, r.target, r.secret_id),
        )
        if not ours:
            continue
        owner = index.by_id[ours[0].secret_id]
        if owner.set_name in pruned:
            reason = f"prune orphaned set '{owner.set_name}'"
        else:
            reason = f"revoke: manifest no longer grants {owner.secret} to {service.name} at {path}"
        changes.append(
            RefChange(
                path=path,
                set_name=owner.set_name,
                secret=owner.secret,
                old=tuple(sorted({r.secret_name for r in ours})),
                new=None,
                target=ours[0].target,
                uid=ours[0].uid,
                gid=ours[0].gid,
                mode=ours[0].mode,
                reason=reason,
            )
        )
    return tuple(changes)


def _revocable(secret: LiveSecret | None, blocked: frozenset[tuple[str, str]]) -> bool:
    return secret is not None and (secret.set_name or "", secret.secret or "") not in blocked


def _wanted_change(
    service: LiveService,
    path: str,
    refs: Sequence[SecretRef],
    want: _Wanted,
    current: _Current,
    index: _Index,
) -> RefChange | None:
    grant = want.grant

    def change(old: tuple[str, ...], reason: str) -> RefChange:
        return RefChange(
            path=path,
            set_name=want.set_name,
            secret=want.secret,
            old=old,
            new=current.name,
            target=grant.target,
            uid=grant.uid,
            gid=grant.gid,
            mode=grant.mode,
            reason=reason,
        )

    if not refs:
        return change((), f"grant {want.secret} to {service.name} at {path}")
    old = tuple(sorted({r.secret_name for r in refs}))
    if len(refs) > 1:
        targets = ", ".join(sorted(r.target for r in refs))
        return change(old, f"{len(refs)} references at one path ({targets}); keep one to {current.name}")
    ref = refs[0]
    owner_change = _owner_change(ref, grant)
    if current.secret_id is not None and ref.secret_id == current.secret_id:
        return change(old, f"file owner/mode changed ({owner_change})") if owner_change else None
    reason = _replace_reason(ref, want, current, index, service)
    if owner_change:
        reason += f"; file owner/mode changed ({owner_change})"
    return change(old, reason)


def _unchanged(ref: SecretRef, grant: ServiceGrant, current: _Current) -> bool:
    return (
        current.secret_id is not None
        and ref.secret_id == current.secret_id
        and (ref.uid, ref.gid, ref.mode) == (grant.uid, grant.gid, grant.mode)
    )


def _replace_reason(
    ref: SecretRef, want: _Wanted, current: _Current, index: _Index, service: LiveService
) -> str:
    live = index.by_id.get(ref.secret_id)
    if live is None:
        return f"replace '{ref.secret_name}', which no longer exists, with {current.name}"
    if not live.managed or not live.secret or not live.set_name:
        stack_secret = service.stack and live.labels.get(STACK_NAMESPACE_LABEL) == service.stack
        if stack_secret and _was_wanted(service, want, current.name):
            return (
                f"{STACK_DRIFT} of stack '{service.stack}' put its own secret '{live.name}' back; "
                f"manifest wants {current.name} (deploy the stack with `swarm-secrets stack deploy` "
                "to keep it)"
            )
        return f"migrate from unmanaged secret '{live.name}' to {current.name}"
    if (live.set_name, live.secret) != (want.set_name, want.secret):
        return (
            f"replace {live.name} (secret {live.secret} of set '{live.set_name}') with {current.name}, "
            f"as set '{want.set_name}' grants {want.secret} here"
        )
    if current.secret_id is None:
        return f"rotate to v{current.version} ({current.rotation})"
    return _return_reason(_version(live), current.version, want, index, service)


def _return_reason(on: int, wanted: int, want: _Wanted, index: _Index, service: LiveService) -> str:
    """Why a service on version ``on`` of a secret goes to the existing version ``wanted``.

    Told apart by what the swarm shows (the only history there is):

    * the service is on the newest version and the manifest's value is an older one's again: the value
      changed back (a revert in git), nothing was done by hand;
    * the wanted version is in PreviousSpec and Swarm rolled the update back: the last rollout failed;
    * the wanted version is in PreviousSpec otherwise: someone (or another writer) moved the service
      off it: drift;
    * the wanted version is newer and never reached the service: an earlier apply stopped before
      rolling it out.

    A service moved by hand to the newest version after a revert looks exactly like the first case.
    """
    newest = _version(index.versions[(want.set_name, want.secret)][-1])
    if on == newest and wanted < on:
        return f"value changed back to v{wanted} (from v{on})"
    previous = (index.by_id.get(r.secret_id) for r in service.previous_refs if r.path == want.grant.path)
    wanted_before = any(
        s is not None and (s.set_name, s.secret, s.version) == (want.set_name, want.secret, wanted)
        for s in previous
    )
    if wanted_before and service.update_state in ("rollback_completed", "rollback_paused"):
        state = service.update_state.replace("_", " ")
        return f"the swarm rolled the update to v{wanted} back ({state}); trying v{wanted} again"
    if wanted > on and not wanted_before:
        return f"roll out v{wanted} (created earlier, never rolled out to this service)"
    if wanted_before and service.stack:
        reason = (
            f"{STACK_DRIFT} of stack '{service.stack}' moved it to v{on} (what its compose file names); "
            f"manifest wants v{wanted}"
        )
    else:
        reason = f"drift: service points at v{on}, manifest wants v{wanted}"
    if on > wanted:
        reason += f" (the manifest's content matches v{wanted} again)"
    return reason


def _was_wanted(service: LiveService, want: _Wanted, name: str) -> bool:
    """The service's PreviousSpec referenced version ``name`` at the wanted path: its last update moved
    it off the version the manifest wants."""
    return any(r.secret_name == name and r.path == want.grant.path for r in service.previous_refs)


def _owner_change(ref: SecretRef, grant: ServiceGrant) -> str:
    parts = [
        f"{field} {old}→{new}"
        for field, old, new in (("uid", ref.uid, grant.uid), ("gid", ref.gid, grant.gid))
        if old != new
    ]
    if ref.mode != grant.mode:
        parts.append(f"mode {ref.mode:04o}→{grant.mode:04o}")
    return ", ".join(parts)


def _update_summary(changes: Sequence[RefChange]) -> str:
    words = {"add": "added", "remove": "removed", "replace": "replaced"}
    ops = [words[c.op] for c in changes]
    detail = ", ".join(f"{ops.count(op)} {op}" for op in ("added", "replaced", "removed") if op in ops)
    noun = "reference changes" if len(changes) == 1 else "references change"
    return f"{len(changes)} {noun} ({detail})"


# --- 3. collection (rules in collect.py) -----------------------------------------------------------


def _scopes(
    desired: DesiredState,
    index: _Index,
    currents: Mapping[tuple[str, str], _Current],
    blocked: frozenset[tuple[str, str]],
    pruned: frozenset[str],
) -> Iterator[Scope]:
    # Only the current version exists: nothing to remove or keep. That is nearly every secret in the
    # steady state, so they are left out before anything is sorted or built.
    unsettled = [
        key
        for key, versions in index.versions.items()
        if not (
            len(versions) == 1
            and (current := currents.get(key)) is not None
            and versions[0].id == current.secret_id
        )
    ]
    if not unsettled:
        return
    keeps = {s.name: s.keep for s in desired.sets}
    declared = {(s.name, x.secret) for s in desired.sets for x in s.secrets}
    for key in sorted(unsettled):
        set_name, secret = key
        # A blocked secret has no current version yet: whatever exists is still what services use.
        if key in blocked or (set_name not in keeps and set_name not in pruned):
            continue
        current = currents.get(key)
        versions = index.versions[key]
        if set_name in pruned:
            cause = Cause.ORPHANED
        elif key in declared:
            cause = Cause.SUPERSEDED
        else:
            cause = Cause.DELETED
        yield Scope(
            set_name=set_name,
            secret=secret,
            versions=tuple(versions),
            current_id=current.secret_id if current else None,
            current_version=current.version if current else None,
            keep=keeps.get(set_name, 0),
            cause=cause,
        )


# --- the services after this plan's updates --------------------------------------------------------


def predict(
    live: LiveState,
    updates: Sequence[UpdateService],
    creates: Sequence[CreateSecret] = (),
    deploys: Sequence[DeployStack] = (),
) -> LiveState:
    """``live`` as it will be once ``updates`` and ``deploys`` are made: each updated service's Spec
    holds the rewritten references (``core/refs.py``) and its PreviousSpec the references it has now
    (a deploy writes every service of its stack, whether its references change or not), and the
    tasks already told to stop (the old tasks of a rollout that just ended) have stopped: the
    executor's rollouts take longer than that. Secrets and the other tasks are left as observed. The
    executor re-checks every such removal against a fresh look before it removes anything."""
    if not updates and not deploys:
        return live
    ids = {s.name: s.id for s in live.secrets}
    ids.update({c.name: f"planned:{c.name}" for c in creates})
    by_id = {u.service_id: u.changes for u in updates}
    by_id.update({s.service_id: s.changes for d in deploys for s in d.services if s.service_id})
    services = []
    for service in live.services:
        changes = by_id.get(service.id)
        if changes is None:
            services.append(service)
            continue
        refs = apply_ref_changes(service.refs, changes, ids)
        services.append(replace(service, refs=refs, previous_refs=service.refs))
    stopped = live.stopping_task_secret_ids
    return replace(
        live,
        services=tuple(services),
        task_secret_ids=live.task_secret_ids - stopped,
        task_nodes={k: v for k, v in live.task_nodes.items() if k not in stopped},
        stopping_task_secret_ids=frozenset(),
    )
