"""The one reference-rewrite rule: how a :class:`~reconciler.core.plan.RefChange` changes a service's
secret references.

It works on the Engine's own JSON shape (``{"SecretID", "SecretName", "File": {"Name", "UID", "GID",
"Mode"}}``), so the executor can apply it to the raw spec it sends back (fields we do not model
survive byte for byte), and the planner's prediction and its tests use the same rule through
:func:`apply_ref_changes`, which converts :class:`~reconciler.core.model.SecretRef` values there and
back.

The rule, per change in order:

1. drop every reference whose normalized path is ``change.path`` *and* whose secret name is one of
   ``change.old`` (a foreign reference at the same path is not listed and stays);
2. when ``change.new`` is set, add one reference to it with the target as the manifest writes it and
   UID, GID and Mode always set (the raw API has no defaults: an omitted Mode means a file of mode
   000, an omitted UID fails every task). When what is left at that path is exactly that reference
   (a concurrent run wrote it already) nothing is added; when anything else is left there, the
   service changed since the plan was made: :class:`~reconciler.errors.SwarmConflict`.

Untouched references keep their order and their bytes. A ``new`` name without a known id (its
version is gone, or was never created) is a :class:`~reconciler.errors.SwarmConflict` as well:
observing again settles it.

Pure: no docker, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.core.model import SecretRef, normalize_target
from reconciler.core.plan import RefChange
from reconciler.errors import SwarmConflict

__all__ = ["apply_ref_changes", "parse_refs", "raw_ref", "ref_path", "rewrite_refs"]

RawRef = Mapping[str, Any]
"""One entry of ``TaskTemplate.ContainerSpec.Secrets`` as the engine sends it."""


def ref_path(raw: RawRef) -> str:
    """The normalized in-container path of a raw reference."""
    return normalize_target(str((raw.get("File") or {}).get("Name", "")))


def parse_refs(raws: Sequence[RawRef] | None) -> tuple[SecretRef, ...]:
    """Raw references as :class:`SecretRef` values (missing fields become empty, never a guess)."""
    refs = []
    for raw in raws or ():
        file = raw.get("File") or {}
        refs.append(
            SecretRef(
                secret_id=raw.get("SecretID", ""),
                secret_name=raw.get("SecretName", ""),
                target=file.get("Name", ""),
                uid=str(file.get("UID", "")),
                gid=str(file.get("GID", "")),
                mode=int(file.get("Mode", 0)),
            )
        )
    return tuple(refs)


def raw_ref(ref: SecretRef) -> dict[str, Any]:
    """A :class:`SecretRef` in the engine's shape, UID/GID/Mode always set."""
    return {
        "SecretID": ref.secret_id,
        "SecretName": ref.secret_name,
        "File": {"Name": ref.target, "UID": ref.uid, "GID": ref.gid, "Mode": ref.mode},
    }


def _wanted(change: RefChange, ids: Mapping[str, str]) -> dict[str, Any]:
    assert change.new is not None
    secret_id = ids.get(change.new)
    if secret_id is None:
        raise SwarmConflict(f"secret {change.new} does not exist (any more); it cannot be referenced")
    return raw_ref(
        SecretRef(
            secret_id=secret_id,
            secret_name=change.new,
            target=change.target or change.path,
            uid=change.uid,
            gid=change.gid,
            mode=change.mode,
        )
    )


def rewrite_refs(
    current: Sequence[RawRef], changes: Sequence[RefChange], ids: Mapping[str, str]
) -> list[dict[str, Any]]:
    """``current`` with ``changes`` applied (the rule in the module docstring); ``ids`` maps each
    ``new`` name to its secret id. Untouched entries are copied, never rebuilt."""
    result = [dict(raw) for raw in current]
    for change in changes:
        olds = frozenset(change.old)
        result = [r for r in result if not (ref_path(r) == change.path and r.get("SecretName") in olds)]
        if change.new is None:
            continue
        wanted = _wanted(change, ids)
        others = [r for r in result if ref_path(r) == change.path]
        if others == [wanted]:
            continue
        if others:
            names = ", ".join(sorted(str(r.get("SecretName")) for r in others))
            raise SwarmConflict(f"{change.path} holds {names}, which the plan did not expect")
        result.append(wanted)
    return result


def apply_ref_changes(
    refs: Sequence[SecretRef], changes: Sequence[RefChange], ids: Mapping[str, str]
) -> tuple[SecretRef, ...]:
    """:func:`rewrite_refs` on :class:`SecretRef` values (for the planner's prediction and tests)."""
    return parse_refs(rewrite_refs([raw_ref(r) for r in refs], changes, ids))
