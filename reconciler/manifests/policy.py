"""Load the operator's policy file (``--policy FILE``) into a :class:`~reconciler.core.policy.Policy`.

The file is one YAML document, ``apiVersion: swarm-secrets/v1``, ``kind: Policy``, checked against
``schemas/policy.v1.json`` with the same line-marked, friendly messages as manifests, every problem at
once (:class:`~reconciler.errors.PolicyFileError`). Target globs must be normalised absolute paths
(no ``.``/``..`` segments, no ``//``), so what a rule allows is what it says.

It is only ever read from the path the operator gives, never from the manifest folders (the loader
refuses a ``kind: Policy`` document there). A policy file inside the source root is allowed (a
protected path with CODEOWNERS can be right) but warned about: whoever can change the manifests
could then change their own limits.

Reads the one file it is given; never a manifest or a source.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from reconciler.core.policy import DEFAULT_TARGETS, Policy, Rule
from reconciler.display import display_path
from reconciler.errors import PolicyFileError, Problem
from reconciler.manifests.roots import resolve_inside
from reconciler.manifests.schema import POLICY_SCHEMA_FILE, schema_problems
from reconciler.manifests.yamlload import Document, PathKey, YamlProblem, compose_documents, format_path

log = logging.getLogger(__name__)

API_VERSION = "swarm-secrets/v1"
KIND = "Policy"
MAX_BYTES = 1024 * 1024
"""A policy is a few hundred lines; more is the wrong file."""


def load_policy(path: Path, *, source_roots: Sequence[Path] = ()) -> Policy:
    """The policy in ``path``; raises :class:`PolicyFileError` with every problem found.

    ``source_roots``: the manifests' source roots, to warn when the policy lies inside one.
    """
    shown = display_path(path)
    doc = _read(path, shown)
    problems = [Problem(shown, doc.line_of(p), format_path(p), m) for p, m in _problems(doc)]
    if problems:
        raise PolicyFileError(sorted(problems, key=lambda p: p.line or 0))
    data = cast(Mapping[str, Any], doc.data)
    spec: Mapping[str, Any] = data["spec"]
    rules = tuple(
        Rule(
            number=index + 1,
            file=shown,
            line=doc.line_of(("spec", "rules", index)),
            sets=tuple(raw["sets"]),
            services=tuple(raw.get("services") or ()),
            stacks=tuple(raw.get("stacks") or ()),
            targets=tuple(raw["targets"]) if "targets" in raw else DEFAULT_TARGETS,
            env=tuple(raw.get("env") or ()),
            adopt=bool(raw.get("adopt", False)),
            files=tuple(raw["files"]) if "files" in raw else None,
            deploy=tuple(raw.get("deploy") or ()),
        )
        for index, raw in enumerate(spec["rules"])
    )
    for root in source_roots:
        if resolve_inside(path, root) is not None:
            log.warning(
                "the policy %s lies inside the manifests' source root %s: whoever can change the "
                "manifests can change the policy too; keep it outside (a Docker config, a CI file "
                "variable) or protect it (CODEOWNERS, branch protection)",
                shown,
                root,
            )
            break
    log.debug("policy %s: %d rule(s)", shown, len(rules))
    return Policy(file=shown, rules=rules, sops_env=tuple((spec.get("sops") or {}).get("env") or ()))


def _read(path: Path, shown: str) -> Document:
    def fail(message: str, line: int | None = None, where: PathKey = ()) -> PolicyFileError:
        return PolicyFileError([Problem(shown, line, format_path(where), message)])

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read the policy file: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > MAX_BYTES:
        raise fail(f"the policy file is larger than {MAX_BYTES} bytes: is it the right file?")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text (bad byte at offset {exc.start}); a policy is UTF-8 YAML") from None
    try:
        documents = list(compose_documents(text))
        if len(documents) != 1:
            raise fail(f"expected one YAML document (`kind: {KIND}`), found {len(documents)}")
        composed = documents[0]
        api, kind = composed.top_level_text("apiVersion"), composed.top_level_text("kind")
        if kind != KIND:
            found = f"kind {kind!r}" if kind else "no kind"
            raise fail(
                f"{found}: a policy file holds one document with `apiVersion: {API_VERSION}` and "
                f"`kind: {KIND}` (manifests are not policies)",
                composed.line,
            )
        if api != API_VERSION:
            raise fail(
                f"apiVersion {api!r}: this swarm-secrets reads `apiVersion: {API_VERSION}`", composed.line
            )
        return composed.build()
    except YamlProblem as exc:
        raise fail(exc.message, exc.line, exc.path) from None


def _problems(doc: Document) -> list[tuple[PathKey, str]]:
    found = schema_problems(doc.data, POLICY_SCHEMA_FILE)
    if found:
        return found
    data = cast(Mapping[str, Any], doc.data)
    for index, rule in enumerate(data["spec"]["rules"]):
        for position, glob in enumerate(rule.get("targets") or ()):
            normal = posixpath.normpath(glob)
            if normal != glob or glob.startswith("//"):
                found.append(
                    (
                        ("spec", "rules", index, "targets", position),
                        f"target glob {glob!r} is not normalised: write {normal!r} (targets are matched "
                        "after normalising, so '..', '.' and '//' would never match)",
                    )
                )
    return found
