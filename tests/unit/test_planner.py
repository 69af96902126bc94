"""The planner, driven by data: one YAML file per case under ``planner_cases/``.

A case file holds ``description``, ``desired``, ``live``, optional ``prune_orphans`` and ``expected``;
the format is documented in ``planner_cases/README.md``. Every case is also checked for the GitOps
invariant: apply the plan to the live state (as the executor would), plan again, and nothing is left
to create or update; apply that, and the third plan has no actions at all.

Python tests below cover what the compact expectation leaves out (labels, versions, targets, order).
"""

from __future__ import annotations

import ast
import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.core import planner, schedule
from reconciler.core.model import (
    LABEL_FINGERPRINT,
    LABEL_GENERATOR,
    LABEL_MANAGED,
    LABEL_REVISION,
    LABEL_SECRET,
    LABEL_SET,
    LABEL_VERSION,
    DesiredSecret,
    DesiredSet,
    DesiredState,
    LiveNode,
    LiveSecret,
    LiveService,
    LiveState,
    SecretRef,
    ServiceGrant,
)
from reconciler.core.plan import CreateSecret, Plan, RefChange, RemoveSecret, UpdateService
from reconciler.core.planner import fingerprint_key_id, plan
from reconciler.core.refs import apply_ref_changes
from reconciler.errors import SwarmConflict

CASES_DIR = Path(__file__).parent / "planner_cases"
CASE_FILES = sorted(CASES_DIR.glob("*.yaml"))
DEFAULT_KEY = "k1"

# --- loading cases ----------------------------------------------------------------------------------


def _fingerprint(token: str, key_id: str) -> str:
    """Cases write short tokens (``a``); the planner sees ``hmac-sha256:<key>:<token>``."""
    return token if token.startswith("hmac-sha256:") else f"hmac-sha256:{key_id}:{token}"


def _mode(raw: Any) -> int:
    # YAML 1.1 reads 0440 as octal already; a quoted "0440" is octal text.
    return int(raw, 8) if isinstance(raw, str) else int(raw)


def _split_at(text: str, default_target: str) -> tuple[str, str]:
    """``name@target`` shorthand; the target defaults to ``default_target``."""
    name, _, target = text.partition("@")
    return name, target or default_target


def _grant(raw: Any, secret: str) -> ServiceGrant:
    if isinstance(raw, str):
        service, target = _split_at(raw, secret)
        return ServiceGrant(service=service, target=target)
    return ServiceGrant(
        service=raw["service"],
        target=raw.get("target", secret),
        uid=str(raw.get("uid", "0")),
        gid=str(raw.get("gid", "0")),
        mode=_mode(raw.get("mode", 0o444)),
    )


def _desired(raw: dict[str, Any]) -> DesiredState:
    key_id = raw.get("key_id", DEFAULT_KEY)
    sets = []
    for set_name, body in (raw.get("sets") or {}).items():
        body = body or {}
        secrets = tuple(
            DesiredSecret(
                set_name=set_name,
                secret=name,
                fingerprint=""
                if "generate" in spec
                else _fingerprint(str(spec["fp"]), spec.get("key", key_id)),
                labels=spec.get("labels", {}),
                grants=tuple(_grant(g, name) for g in spec.get("grants", ())),
                generator=spec.get("generate"),
                rotate=schedule.rotation(spec["rotate"]) if "rotate" in spec else None,
            )
            for name, spec in (body.get("secrets") or {}).items()
        )
        sets.append(DesiredSet(name=set_name, keep=body.get("keep", 0), secrets=secrets))
    forced = {tuple(key.split("/")): number for key, number in (raw.get("forced") or {}).items()}
    return DesiredState(
        sets=tuple(sets),
        revision=raw.get("revision"),
        fingerprint_key_id=key_id,
        now=_time(raw["now"]) if "now" in raw else None,
        forced=forced,
    )


def _time(raw: Any) -> float:
    """Cases write times as days after an epoch of their own (``now: 100``, ``created: 9``)."""
    return 1_700_000_000.0 + float(raw) * 86_400


def _stamp(raw: Any) -> str:
    return datetime.fromtimestamp(_time(raw), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _live_secret(raw: Any) -> LiveSecret:
    if isinstance(raw, str):
        return LiveSecret(id=f"id-{raw}", name=raw)  # unmanaged
    labels = dict(raw.get("labels", {}))
    if "set" in raw:
        labels |= {
            LABEL_MANAGED: "true",
            LABEL_SET: raw["set"],
            LABEL_SECRET: raw["secret"],
            LABEL_VERSION: str(raw["version"]),
        }
        if "generator" in raw:
            labels[LABEL_GENERATOR] = raw["generator"]
        else:
            labels[LABEL_FINGERPRINT] = _fingerprint(str(raw["fp"]), raw.get("key", DEFAULT_KEY))
    name = raw.get("name") or f"{raw['secret']}_v{raw['version']}"
    created = _stamp(raw["created"]) if "created" in raw else ""
    return LiveSecret(id=raw.get("id", f"id-{name}"), name=name, labels=labels, created_at=created)


def _ref(raw: Any, ids: dict[str, str]) -> SecretRef:
    if isinstance(raw, str):
        name, target = _split_at(raw, "")
        raw = {"secret": name, "target": target or name}
    name = raw["secret"]
    return SecretRef(
        secret_id=raw.get("id", ids.get(name, f"id-{name}")),
        secret_name=name,
        target=raw["target"],
        uid=str(raw.get("uid", "0")),
        gid=str(raw.get("gid", "0")),
        mode=_mode(raw.get("mode", 0o444)),
    )


def _live(raw: dict[str, Any]) -> LiveState:
    secrets = tuple(_live_secret(s) for s in raw.get("secrets", ()))
    ids = {s.name: s.id for s in secrets}
    services = tuple(
        LiveService(
            id=body.get("id", f"svc-{name}"),
            name=name,
            version=body.get("version", 1),
            refs=tuple(_ref(r, ids) for r in body.get("refs", ())),
            previous_refs=tuple(_ref(r, ids) for r in body.get("previous_refs", ())),
            update_state=body.get("update_state"),
            stack=body.get("stack"),
        )
        for name, body in (raw.get("services") or {}).items()
        for body in [body or {}]
    )
    # tasks: a name (a task somewhere: placement unknown) or {secret: name, node: node id, stopping: true}
    # (stopping: told to shut down, not stopped yet)
    task_nodes: dict[str, set[str]] = {}
    unplaced: set[str] = set()
    wanted: set[str] = set()
    for task in raw.get("tasks", ()):
        if isinstance(task, str):
            unplaced.add(ids.get(task, task))
            wanted.add(ids.get(task, task))
        else:
            secret_id = ids.get(task["secret"], task["secret"])
            task_nodes.setdefault(secret_id, set()).add(task.get("node", ""))
            if not task.get("stopping"):
                wanted.add(secret_id)
    nodes = tuple(
        LiveNode(id=node_id, hostname=f"host-{node_id}", state=state)
        for node_id, state in (raw.get("nodes") or {}).items()
    )
    return LiveState(
        secrets=secrets,
        services=services,
        task_secret_ids=frozenset(unplaced | set(task_nodes)),
        task_nodes={k: frozenset(v) for k, v in task_nodes.items() if k not in unplaced},
        nodes=nodes,
        stopping_task_secret_ids=frozenset(unplaced | set(task_nodes)) - wanted,
    )


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    description: str
    desired: DesiredState
    live: LiveState
    prune_orphans: bool
    expected: list[Any]


def load_case(path: Path) -> Case:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    unknown = set(raw) - {"description", "desired", "live", "prune_orphans", "expected"}
    assert not unknown, f"{path.name}: unknown keys {sorted(unknown)}"
    return Case(
        name=path.stem,
        description=raw["description"],
        desired=_desired(raw.get("desired") or {}),
        live=_live(raw.get("live") or {}),
        prune_orphans=bool(raw.get("prune_orphans", False)),
        expected=list(raw.get("expected") or []),
    )


# --- the compact view of a plan ---------------------------------------------------------------------


def _owner(change: RefChange) -> str:
    if change.new is None or (change.uid, change.gid, change.mode) == ("0", "0", 0o444):
        return ""
    return f" [uid {change.uid} gid {change.gid} mode {change.mode:04o}]"


def _change_struct(service: str, change: RefChange) -> str:
    old = ", ".join(change.old)
    if not change.old:
        return f"{service} + {change.path} {change.new}{_owner(change)}"
    if change.new is None:
        return f"{service} - {change.path} {old}"
    return f"{service} ~ {change.path} {old} -> {change.new}{_owner(change)}"


def compact(result: Plan) -> list[tuple[str, str]]:
    """(structure, reason) per line, in plan order: creates, updates (+ changes), removals, blocked,
    kept, warnings, orphaned sets."""
    lines: list[tuple[str, str]] = []
    for action in result.actions:
        if isinstance(action, CreateSecret):
            lines.append((f"create {action.set_name}/{action.name}", action.reason))
        elif isinstance(action, UpdateService):
            lines.append((f"update {action.service}", action.reason))
            lines += [(_change_struct(action.service, c), c.reason) for c in action.changes]
        elif isinstance(action, RemoveSecret):
            lines.append((f"remove {action.set_name}/{action.name}", action.reason))
        else:
            lines.append((f"deploy {action.stack}", action.reason))
    lines += [(f"blocked {b.set_name}/{b.secret}", b.reason) for b in result.blocked]
    lines += [(f"kept {k.set_name}/{k.name}", k.reason) for k in result.kept]
    lines += [("warning", w) for w in result.warnings]
    lines += [(f"orphaned {name}", "") for name in result.orphaned_sets]
    return lines


def _matches(expected: Any, struct: str, reason: str) -> bool:
    """An expected line is ``struct`` alone, or ``{struct: fragment}`` / ``{struct: [fragments]}``
    where every fragment must appear in the reason."""
    if isinstance(expected, str):
        return expected == struct
    if not isinstance(expected, dict) or len(expected) != 1:
        return False
    ((want, fragments),) = expected.items()
    fragments = fragments if isinstance(fragments, list) else [fragments]
    return want == struct and all(str(f) in reason for f in fragments)


def assert_plan_matches(result: Plan, expected: list[Any]) -> None:
    actual = compact(result)
    # Where a line matches, show it as written in the case so the pytest diff points at real mismatches.
    view: list[Any] = [
        expected[i] if i < len(expected) and _matches(expected[i], struct, reason) else {struct: reason}
        for i, (struct, reason) in enumerate(actual)
    ]
    assert view == expected


# --- applying a plan to a live state (what the executor does, without docker) -----------------------


def simulate_apply(result: Plan, live: LiveState) -> LiveState:
    created = tuple(
        LiveSecret(id=f"new-{c.name}", name=c.name, labels=dict(c.labels)) for c in result.creates
    )
    removed = {r.secret_id for r in result.removals}
    secrets = tuple(s for s in live.secrets + created if s.id not in removed)
    ids = {s.name: s.id for s in secrets}
    updates = {u.service_id: u for u in result.updates}
    services = []
    for service in live.services:
        update = updates.get(service.id)
        if update is None:
            services.append(service)
            continue
        assert update.observed_version == service.version
        services.append(
            dataclasses.replace(
                service,
                version=service.version + 1,
                refs=apply_ref_changes(service.refs, update.changes, ids),
                previous_refs=service.refs,  # the engine keeps the replaced Spec as PreviousSpec
                update_state="completed",
            )
        )
    return dataclasses.replace(live, secrets=secrets, services=tuple(services))


# --- the cases --------------------------------------------------------------------------------------


def test_there_are_enough_cases() -> None:
    assert len(CASE_FILES) >= 30


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_case(path: Path) -> None:
    case = load_case(path)
    assert case.description.strip(), "every case says what it shows"
    result = plan(case.desired, case.live, prune_orphans=case.prune_orphans)
    assert_plan_matches(result, case.expected)


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_case_is_deterministic_whatever_the_input_order(path: Path) -> None:
    case = load_case(path)
    reversed_live = dataclasses.replace(
        case.live,
        secrets=case.live.secrets[::-1],
        services=tuple(dataclasses.replace(s, refs=s.refs[::-1]) for s in case.live.services[::-1]),
        nodes=case.live.nodes[::-1],
    )
    reversed_desired = dataclasses.replace(
        case.desired,
        sets=tuple(dataclasses.replace(s, secrets=s.secrets[::-1]) for s in case.desired.sets[::-1]),
    )
    first = plan(case.desired, case.live, prune_orphans=case.prune_orphans)
    assert plan(case.desired, case.live, prune_orphans=case.prune_orphans) == first
    again = plan(reversed_desired, reversed_live, prune_orphans=case.prune_orphans)
    # Untouched references keep their order, which this test reversed; everything else is identical.
    assert compact(again) == compact(first)


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_case_converges(path: Path) -> None:
    """apply, plan again: nothing to create or update; apply the collection: nothing at all."""
    case = load_case(path)
    first = plan(case.desired, case.live, prune_orphans=case.prune_orphans)
    live = simulate_apply(first, case.live)
    second = plan(case.desired, live, prune_orphans=case.prune_orphans)
    assert not second.creates and not second.updates, compact(second)
    assert second.blocked == first.blocked
    third = plan(case.desired, simulate_apply(second, live), prune_orphans=case.prune_orphans)
    assert third.actions == ()


# --- what the compact view leaves out ---------------------------------------------------------------


def _one_secret(**grant: Any) -> DesiredState:
    return DesiredState(
        sets=(
            DesiredSet(
                name="shop",
                secrets=(
                    DesiredSecret(
                        set_name="shop",
                        secret="db_password",
                        fingerprint="hmac-sha256:k1:new",
                        labels={"team": "shop", LABEL_MANAGED: "no"},
                        grants=(ServiceGrant(service="shop_web", target="db_password", **grant),),
                    ),
                ),
            ),
        ),
        revision="abc123",
        fingerprint_key_id="k1",
    )


def _managed(version: int, fp: str = "old", set_name: str = "shop") -> LiveSecret:
    return LiveSecret(
        id=f"id{version}",
        name=f"db_password_v{version}",
        labels={
            LABEL_MANAGED: "true",
            LABEL_SET: set_name,
            LABEL_SECRET: "db_password",
            LABEL_VERSION: str(version),
            LABEL_FINGERPRINT: f"hmac-sha256:k1:{fp}",
        },
    )


def test_create_carries_user_labels_ours_and_the_revision() -> None:
    result = plan(_one_secret(), LiveState(secrets=(_managed(1),)))
    (create,) = result.creates
    assert create.version == 2 and create.name == "db_password_v2"
    assert dict(create.labels) == {
        "team": "shop",
        LABEL_MANAGED: "true",  # a user label cannot override ownership
        LABEL_SET: "shop",
        LABEL_SECRET: "db_password",
        LABEL_VERSION: "2",
        LABEL_FINGERPRINT: "hmac-sha256:k1:new",
        LABEL_REVISION: "abc123",
    }


def test_a_generated_version_carries_its_generator_and_no_fingerprint() -> None:
    desired = dataclasses.replace(
        _one_secret(),
        sets=(
            DesiredSet(
                name="shop",
                secrets=(
                    DesiredSecret(
                        set_name="shop", secret="db_password", fingerprint="", generator="printable:64"
                    ),
                ),
            ),
        ),
    )
    (create,) = plan(desired, LiveState()).creates
    assert dict(create.labels) == {
        LABEL_MANAGED: "true",
        LABEL_SET: "shop",
        LABEL_SECRET: "db_password",
        LABEL_VERSION: "1",
        LABEL_GENERATOR: "printable:64",
        LABEL_REVISION: "abc123",
    }
    assert create.generator == "printable:64" and create.fingerprint is None


def test_without_a_time_no_rotation_falls_due() -> None:
    """``now`` None (a caller that gives no time): ages are unknown, nothing is rotated or warned."""
    case = load_case(CASES_DIR / "generated-scheduled-rotation.yaml")
    result = plan(dataclasses.replace(case.desired, now=None), case.live)
    assert result.empty and not result.warnings


def test_create_without_revision_has_no_revision_label() -> None:
    desired = dataclasses.replace(_one_secret(), revision=None)
    (create,) = plan(desired, LiveState()).creates
    assert LABEL_REVISION not in create.labels


def test_update_carries_service_identity_and_the_manifest_target_as_written() -> None:
    web = LiveService(
        id="svc1",
        name="shop_web",
        version=41,
        stack="shop",
        refs=(SecretRef(secret_id="id1", secret_name="db_password_v1", target="/run/secrets/db_password"),),
    )
    result = plan(_one_secret(uid="1000", mode=0o400), LiveState(secrets=(_managed(1),), services=(web,)))
    (update,) = result.updates
    assert (update.service, update.service_id, update.observed_version, update.stack) == (
        "shop_web",
        "svc1",
        41,
        "shop",
    )
    (change,) = update.changes
    assert change == RefChange(
        path="/run/secrets/db_password",
        set_name="shop",
        secret="db_password",
        old=("db_password_v1",),
        new="db_password_v2",
        target="db_password",
        uid="1000",
        gid="0",
        mode=0o400,
        reason="rotate to v2 (content changed); file owner/mode changed (uid 0→1000, mode 0444→0400)",
    )


def test_actions_are_ordered_creates_updates_removals() -> None:
    web = LiveService(
        id="svc1",
        name="shop_web",
        version=1,
        refs=(SecretRef(secret_id="id2", secret_name="db_password_v2", target="db_password"),),
    )
    live = LiveState(secrets=(_managed(1), _managed(2)), services=(web,))
    result = plan(_one_secret(), live)
    assert [type(a) for a in result.actions] == [CreateSecret, UpdateService, RemoveSecret]
    assert result.removals[0].name == "db_password_v1"


def test_fingerprint_key_id() -> None:
    assert fingerprint_key_id("hmac-sha256:k1:abcd") == "k1"
    assert fingerprint_key_id("hmac-sha256:key:with:colons:abcd") == "key:with:colons"
    assert fingerprint_key_id("sha224:abcd") is None
    assert fingerprint_key_id("hmac-sha256:abcd") is None
    assert fingerprint_key_id(None) is None


def test_apply_ref_changes_replaces_every_listed_ref_at_a_path_and_keeps_others() -> None:
    refs = (
        SecretRef(secret_id="a", secret_name="pw_v1", target="pw"),
        SecretRef(secret_id="b", secret_name="pw_v2", target="/run/secrets/pw"),
        SecretRef(secret_id="c", secret_name="tls", target="/run/secrets/pw2"),
        SecretRef(secret_id="u", secret_name="legacy", target="/etc/x"),
        SecretRef(secret_id="o", secret_name="old_v1", target="/etc/x"),
    )
    changes = (
        RefChange(
            path="/etc/x",
            set_name="old",
            secret="old",
            old=("old_v1",),
            new=None,
            target="/etc/x",
            reason="r",
        ),
        RefChange(
            path="/run/secrets/pw",
            set_name="s",
            secret="pw",
            old=("pw_v1", "pw_v2"),
            new="pw_v3",
            target="pw",
            mode=0o400,
            reason="r",
        ),
    )
    after = apply_ref_changes(refs, changes, {"pw_v3": "n3"})
    assert after == (
        refs[2],
        refs[3],
        SecretRef(secret_id="n3", secret_name="pw_v3", target="pw", mode=0o400),
    )


def test_apply_ref_changes_needs_the_id_of_every_new_name() -> None:
    change = RefChange(path="/run/secrets/x", set_name="s", secret="x", old=(), new="x_v1", reason="r")
    with pytest.raises(SwarmConflict):
        apply_ref_changes((), (change,), {})


def test_the_planner_is_pure() -> None:
    """No docker, subprocess, I/O or clock: the import-linter contract, checked here too."""
    forbidden = {"docker", "subprocess", "os", "time", "datetime", "socket", "logging", "random"}
    package = Path(planner.__file__).parents[1]
    for module in (
        "core/planner.py",
        "core/collect.py",
        "core/plan.py",
        "core/schedule.py",
        "core/status.py",
        "render/plan.py",
    ):
        tree = ast.parse((package / module).read_text(encoding="utf-8"))
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & forbidden, (module, imported & forbidden)


def test_an_empty_swarm_and_no_manifests_make_an_empty_plan() -> None:
    result = plan(DesiredState(), LiveState())
    assert result == Plan()
    assert result.empty
