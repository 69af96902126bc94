"""Exactness on plain data: when is a fresh plan within the approved one (``core/plan.py``)?"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from reconciler.core.model import LABEL_FINGERPRINT
from reconciler.core.plan import (
    CreateSecret,
    Plan,
    RefChange,
    RemoveSecret,
    UpdateService,
    action_within,
    outside,
    within,
)


def create(name: str = "pw_v2", fingerprint: str = "hmac-sha256:k:a", **kw: Any) -> CreateSecret:
    fields: dict[str, Any] = {
        "set_name": "shop",
        "secret": "pw",
        "version": int(name.rsplit("_v", 1)[1]),
        "name": name,
        "labels": {LABEL_FINGERPRINT: fingerprint},
        "reason": "content changed",
    }
    fields.update(kw)
    return CreateSecret(**fields)


def change(old: tuple[str, ...] = ("pw_v1",), new: str | None = "pw_v2", **kw: Any) -> RefChange:
    fields: dict[str, Any] = {
        "path": "/run/secrets/pw",
        "set_name": "shop",
        "secret": "pw",
        "old": old,
        "new": new,
        "target": "pw",
        "reason": "rotate to v2",
    }
    fields.update(kw)
    return RefChange(**fields)


def update(*changes: RefChange, service_id: str = "s1", version: int = 7) -> UpdateService:
    return UpdateService(
        service="web", service_id=service_id, observed_version=version, changes=changes, reason="r"
    )


def removal(secret_id: str = "id0", name: str = "pw_v0") -> RemoveSecret:
    return RemoveSecret(secret_id=secret_id, name=name, set_name="shop", secret="pw", version=0, reason="r")


APPROVED = Plan(
    actions=(
        create(),
        update(change(), change(path="/etc/tls", old=("tls_v1",), new="tls_v2", target="/etc/tls")),
        removal(),
    )
)


def test_the_approved_plan_and_any_part_of_it_are_within() -> None:
    assert within(APPROVED, APPROVED)
    assert within(Plan(), APPROVED)
    assert within(Plan(actions=(update(change()),)), APPROVED)  # part of the update already made


def test_a_create_is_within_only_with_the_same_name_and_fingerprint() -> None:
    assert action_within(create(reason="other words"), APPROVED)
    assert not action_within(create(fingerprint="hmac-sha256:k:b"), APPROVED)
    assert not action_within(create("pw_v3"), APPROVED)
    assert not action_within(create(set_name="other"), APPROVED)


def test_an_update_is_within_when_its_changes_are_a_subset_of_the_approved_ones() -> None:
    # a newer observed version and other reasons do not matter
    assert action_within(update(change(reason="drift"), version=9), APPROVED)
    # it replaces less than approved (someone already removed the old reference): within
    assert action_within(update(change(old=())), APPROVED)
    # another service, another path, another new version, another owner/mode: not within
    assert not action_within(update(change(), service_id="s2"), APPROVED)
    assert not action_within(update(change(path="/run/secrets/x")), APPROVED)
    assert not action_within(update(change(new="pw_v3")), APPROVED)
    assert not action_within(update(change(mode=0o400)), APPROVED)
    assert not action_within(update(change(target="/run/secrets/pw")), APPROVED)
    # it would replace a reference the approved plan did not (a foreign change at that path)
    assert not action_within(update(change(old=("legacy",))), APPROVED)
    assert not action_within(update(change(old=("pw_v1", "legacy"))), APPROVED)
    # a revoke the approved plan did not contain
    assert not action_within(update(change(new=None)), APPROVED)


def test_a_removal_is_within_when_approved() -> None:
    assert action_within(removal(), APPROVED)
    assert not action_within(removal("id9", "pw_v9"), APPROVED)
    assert not action_within(replace(removal(), name="pw_vX"), APPROVED)


def test_outside_names_creates_and_updates_but_never_fresh_removals() -> None:
    fresh = Plan(actions=(create("pw_v3"), update(change(new="pw_v3")), removal("id9", "pw_v9")))
    assert [type(a).__name__ for a in outside(fresh, APPROVED)] == ["CreateSecret", "UpdateService"]
    assert within(Plan(actions=(removal("id9", "pw_v9"),)), APPROVED)
