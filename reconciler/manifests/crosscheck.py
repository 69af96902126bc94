"""Rules that span documents: names and targets that must be unique across every loaded SecretSet.

The schema checks one document at a time; Swarm's namespaces are global, so these checks look at all
loaded sets together and report every clash (not only the first), each at the later occurrence with
a pointer to the earlier one:

* a set name (``metadata.name``) is used once;
* a logical secret name is used once across all sets, compared case-insensitively (Swarm object names
  are case-insensitive, so ``DB_pw`` and ``db_pw`` would collide);
* one secret lists a service at most once;
* in one service, no two secrets land on the same file (``pw`` and ``/run/secrets/pw`` are the same
  target, see :func:`reconciler.core.model.normalize_target`), across all sets.

Each problem also names the sets it involves (:func:`cross_problems_by_set`), so that the loop can hold
those back and still reconcile the others.

Pure: works on already-built values and their line maps; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.core.model import SecretSet, SecretSpec, ServiceGrant
from reconciler.errors import Problem
from reconciler.manifests.yamlload import Document, PathKey, format_path


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedSet:
    """A built SecretSet with the document it came from, to locate its parts by line."""

    secret_set: SecretSet
    file: str
    """The manifest file as shown to the user."""
    document: Document
    short_grants: frozenset[tuple[str, int]] = frozenset()
    """(secret name, index) of the grants written in short form (a bare service name)."""

    def problem(self, path: PathKey, message: str) -> Problem:
        return Problem(self.file, self.document.line_of(path), format_path(path), message)

    def where(self, path: PathKey) -> str:
        return f"{self.file}:{self.document.line_of(path)}"


def cross_problems(loaded: Sequence[LoadedSet]) -> list[Problem]:
    """Every clash between (and within) the loaded sets, in file order."""
    return [problem for problem, _ in cross_problems_by_set(loaded)]


def cross_problems_by_set(loaded: Sequence[LoadedSet]) -> list[tuple[Problem, frozenset[str]]]:
    """:func:`cross_problems`, each with the names of the sets it involves: both sides of a clash (which
    of the two is wrong is for a person to decide)."""
    found = _set_names(loaded) + _secret_names(loaded) + _grants(loaded)
    order = {entry.file: index for index, entry in reversed(list(enumerate(loaded)))}
    return sorted(found, key=lambda f: (order.get(f[0].file, 0), f[0].line or 0))


def _secret_path(spec: SecretSpec) -> PathKey:
    return ("spec", "secrets", spec.secret)


Found = list[tuple[Problem, frozenset[str]]]


def _set_names(loaded: Sequence[LoadedSet]) -> Found:
    problems: Found = []
    first: dict[str, LoadedSet] = {}
    for entry in loaded:
        name = entry.secret_set.name
        path: PathKey = ("metadata", "name")
        if name in first:
            problem = entry.problem(
                path,
                (
                    f"set name '{name}' is already used by {first[name].where(path)}; each set owns its "
                    "secrets by name, so set names must be unique: rename one"
                ),
            )
            problems.append((problem, frozenset({name})))
        else:
            first[name] = entry
    return problems


def _secret_names(loaded: Sequence[LoadedSet]) -> Found:
    problems: Found = []
    first: dict[str, tuple[LoadedSet, SecretSpec]] = {}
    for entry in loaded:
        for spec in entry.secret_set.secrets:
            folded = spec.secret.casefold()
            if folded not in first:
                first[folded] = (entry, spec)
                continue
            other_entry, other = first[folded]
            where = f"{other_entry.where(_secret_path(other))} (set '{other.set_name}')"
            if other.secret == spec.secret:
                message = (
                    f"secret '{spec.secret}' is also declared in {where}; swarm secret names are "
                    "global, so a logical name may be used only once: rename one"
                )
            else:
                message = (
                    f"secret '{spec.secret}' differs only in case from '{other.secret}' in {where}; "
                    "Swarm compares names case-insensitively: rename one"
                )
            involved = frozenset({spec.set_name, other.set_name})
            problems.append((entry.problem(_secret_path(spec), message), involved))
    return problems


def _grants(loaded: Sequence[LoadedSet]) -> Found:
    problems: Found = []
    # (service, normalized target) -> where it was first granted
    targets: dict[tuple[str, str], tuple[LoadedSet, SecretSpec, int]] = {}
    for entry in loaded:
        for spec in entry.secret_set.secrets:
            seen_services: dict[str, int] = {}
            for index, grant in enumerate(spec.grants):
                path = _grant_path(entry, spec, index)
                if grant.service in seen_services:
                    first_path = (*_secret_path(spec), "services", seen_services[grant.service])
                    problem = entry.problem(
                        (*_secret_path(spec), "services", index),
                        (
                            f"service '{grant.service}' is listed twice for this secret (first at "
                            f"{entry.where(first_path)}, {format_path(first_path)}); a service mounts a "
                            "secret once: remove one entry"
                        ),
                    )
                    problems.append((problem, frozenset({spec.set_name})))
                    continue
                seen_services[grant.service] = index
                key = (grant.service, grant.path)
                if key in targets:
                    involved = frozenset({spec.set_name, targets[key][1].set_name})
                    problems.append((entry.problem(path, _target_clash(grant, targets[key])), involved))
                else:
                    targets[key] = (entry, spec, index)
    return problems


def _grant_path(entry: LoadedSet, spec: SecretSpec, index: int) -> PathKey:
    base = (*_secret_path(spec), "services", index)
    # A short-form grant has no target field: point at the list item.
    return base if (spec.secret, index) in entry.short_grants else (*base, "target")


def _target_clash(grant: ServiceGrant, first: tuple[LoadedSet, SecretSpec, int]) -> str:
    other_entry, other, other_index = first
    other_path = _grant_path(other_entry, other, other_index)
    return (
        f"service '{grant.service}' already gets secret '{other.secret}' (set '{other.set_name}') at "
        f"{grant.path} ({other_entry.where(other_path)}, {format_path(other_path)}); two secrets "
        "cannot be the same file in one container: give one of them another target"
    )
