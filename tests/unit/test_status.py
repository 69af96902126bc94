"""``status`` classifies with the planner's own rules (``core/collect.py``): one idea of "current", one
keep/spare rule. Checked on plain data, and against the planner on every planner case."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core.model import (
    LABEL_FINGERPRINT,
    LABEL_MANAGED,
    LABEL_SECRET,
    LABEL_SET,
    LABEL_VERSION,
    EnvSource,
    LiveSecret,
    LiveService,
    LiveState,
    Origin,
    SecretRef,
    SecretSet,
    SecretSpec,
)
from reconciler.core.planner import plan
from reconciler.core.status import build_status

from .test_planner import CASE_FILES, load_case

ORIGIN = Origin(file="set.yaml", line=1, path="spec")


def version(n: int, set_name: str = "shop", secret: str = "pw") -> LiveSecret:
    return LiveSecret(
        id=f"id{set_name}{secret}{n}",
        name=f"{secret}_v{n}",
        labels={
            LABEL_MANAGED: "true",
            LABEL_SET: set_name,
            LABEL_SECRET: secret,
            LABEL_VERSION: str(n),
            LABEL_FINGERPRINT: f"hmac-sha256:k:{n}",
        },
    )


def ref(secret: LiveSecret) -> SecretRef:
    return SecretRef(secret_id=secret.id, secret_name=secret.name, target="pw")


def manifests(*secrets: str, keep: int = 0, set_name: str = "shop") -> tuple[SecretSet, ...]:
    specs = tuple(
        SecretSpec(set_name=set_name, secret=s, source=EnvSource(var="X"), origin=ORIGIN) for s in secrets
    )
    return (SecretSet(name=set_name, keep=keep, secrets=specs, origin=ORIGIN),)


def notes(live: LiveState, sets: tuple[SecretSet, ...] | None) -> dict[str, str]:
    report = build_status(live, sets)
    found = {}
    for item in report.secrets:
        found[item.current.name] = item.current.note
        found.update({v.name: v.note for v in item.superseded})
    return found


def test_every_reason_to_keep_and_the_newest_version_as_current() -> None:
    v = [version(n) for n in range(1, 7)]
    web = LiveService(id="s1", name="web", version=3, refs=(ref(v[4]),), previous_refs=(ref(v[3]),))
    live = LiveState(secrets=tuple(v), services=(web,), task_secret_ids=frozenset({v[2].id}))
    assert notes(live, manifests("pw", keep=1)) == {
        "pw_v6": "current",  # the newest, even though web still runs v5 (a rolled back rotation)
        "pw_v5": "in use by web",
        "pw_v4": "rollback target of web (PreviousSpec)",
        "pw_v3": "used by tasks still running",
        "pw_v2": "kept: spec.keep=1",
        "pw_v1": "unreferenced: the next apply collects it",
    }


def test_orphaned_and_deleted_secrets() -> None:
    live = LiveState(secrets=(version(1), version(2), version(1, "old", "tok"), version(2, "old", "tok")))
    report = build_status(live, manifests("other"))
    assert report.orphaned_sets == ("old",)
    assert notes(live, manifests("other")) == {
        "pw_v2": "current; the secret is no longer in the manifests",
        "pw_v1": "unreferenced: the next apply collects it",
        "tok_v2": "current",
        "tok_v1": "unreferenced: `apply --prune-orphans` collects it",
    }
    # without manifests nothing is known to be orphaned
    assert build_status(live, None).orphaned_sets == ()


# Cases where status, which sees no values, cannot know what the planner knows: a secret blocked by
# the name its next version needs (that depends on the value), a plan made with --prune-orphans, and a
# value that is an older version's again (status takes the newest version as current).
DIFFERENT = {
    "name-blocked-case-insensitive",
    "orphaned-set-pruned",
    "value-changed-back-two-versions",
    "drift-to-an-older-version-than-wanted-by-hand",
}
COMPARABLE = [p for p in CASE_FILES if p.stem not in DIFFERENT]


def test_the_cases_status_cannot_compare_exist() -> None:
    assert DIFFERENT <= {p.stem for p in CASE_FILES}


@pytest.mark.parametrize("path", COMPARABLE, ids=[p.stem for p in COMPARABLE])
def test_status_says_the_next_apply_collects_exactly_what_the_planner_removes_now(path: Path) -> None:
    case = load_case(path)
    result = plan(case.desired, case.live, prune_orphans=case.prune_orphans)
    sets = tuple(
        SecretSet(
            name=s.name,
            keep=s.keep,
            secrets=tuple(
                SecretSpec(set_name=s.name, secret=x.secret, source=EnvSource(var="X"), origin=ORIGIN)
                for x in s.secrets
            ),
            origin=ORIGIN,
        )
        for s in case.desired.sets
    )
    said = {name for name, note in notes(case.live, sets).items() if "the next apply collects it" in note}
    assert said == {r.name for r in result.removals if not r.after}
