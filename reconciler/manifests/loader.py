"""Load SecretSet manifests: find the files, read them with line numbers, validate, build model values.

``load_manifests(paths, boundary)`` is the entry point (``load`` returns only its sets). It reads every
``*.yaml``/``*.yml`` under the given folders (and any file given by name), keeps the documents that are
ours, checks them against ``schemas/manifest.v1.json`` or, for ``kind: Stack``,
``schemas/stack.v1.json`` (see ``schema.py``) and the cross-file rules (see ``crosscheck.py``; a Stack's
compose files against the sets' grants: ``core/stacks.check_grants``), holds them to the operator's
boundary (``core/guard.py``: policy, reserved variables, targets, which stacks may be deployed), and
returns frozen :class:`~reconciler.core.model.SecretSet` and :class:`~reconciler.core.stacks.StackSpec`
values. A Stack's compose files are read here (``compose.py``), interpolated with its ``spec.env``
only; they, and every file docker would read for them, must lie inside the source root. Every problem
in every file is collected and raised together (:class:`~reconciler.errors.ManifestError`, or
:class:`~reconciler.errors.PolicyViolation` when only the boundary is crossed), each located as
``file:line: path``.

Other YAML documents (a sops-encrypted file, ``.sops.yaml``, a compose file) are skipped without
being built. A document that looks like ours but is not one this version reads (``kind: SecretSet``
or ``kind: Policy``, an ``apiVersion`` like ``swarm-secret/v1``) is an error, never skipped: a skipped
set would look deleted. Hidden folders (``.git``, ``.github``) are not searched; folders that are
symlinks are not followed. Manifests found in a folder, and every ``file``/``sops.file`` source, must
resolve inside the source root (``roots.py``).

This module must not read secret values: sources are recorded (paths made absolute), never opened.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from reconciler.core import guard, schedule
from reconciler.core.model import (
    RAW_BYTES,
    EnvSource,
    FileSource,
    GenerateSource,
    Origin,
    SecretSet,
    SecretSpec,
    ServiceGrant,
    SopsSource,
    Source,
)
from reconciler.core.stacks import StackSpec, check_grants
from reconciler.display import count, display_path
from reconciler.errors import ManifestError, PolicyViolation, Problem, ProblemsError
from reconciler.manifests.compose import read_compose
from reconciler.manifests.crosscheck import LoadedSet, cross_problems_by_set
from reconciler.manifests.roots import location, resolve_inside, source_root
from reconciler.manifests.schema import STACK_SCHEMA_FILE, schema_problems
from reconciler.manifests.yamlload import (
    ComposedDocument,
    Document,
    PathKey,
    YamlProblem,
    compose_documents,
    format_path,
)
from reconciler.paths import RealPaths, inside

log = logging.getLogger(__name__)

API_GROUP = "swarm-secrets/"
API_VERSION = "swarm-secrets/v1"
KIND = "SecretSet"
POLICY_KIND = "Policy"
STACK_KIND = "Stack"
_OUR_KINDS = frozenset({KIND.lower(), POLICY_KIND.lower(), STACK_KIND.lower()})
_SET_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
"""``metadata.name`` as the schema allows it (``schemas/manifest.v1.json``, ``setName``)."""
MAX_SET_NAME = 40
_OCTAL_TOKEN = re.compile(r"0[0-7]*|[0-7]")
"""How a mode may be written as a YAML integer: octal (``0440``), or one digit (the same in both bases)."""
DEFAULT_PATH = Path("manifests")
"""Where commands look when no path is given."""
YAML_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 1024 * 1024
"""Largest YAML file read from a manifest folder. A manifest is a few KiB; every YAML file there is
read to find out whether it is one, so this also bounds what a stray or hostile file can cost."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifests:
    """What the manifest paths hold."""

    sets: tuple[SecretSet, ...] = ()
    stacks: tuple[StackSpec, ...] = ()


def load(
    paths: Sequence[Path],
    boundary: guard.Boundary | None = None,
    *,
    enforce: bool = True,
    complete: bool = False,
) -> tuple[SecretSet, ...]:
    """The SecretSets of :func:`load_manifests` (Stack manifests are read and checked too)."""
    return load_manifests(paths, boundary, enforce=enforce, complete=complete).sets


def load_manifests(
    paths: Sequence[Path],
    boundary: guard.Boundary | None = None,
    *,
    enforce: bool = True,
    complete: bool = False,
) -> Manifests:
    """Every SecretSet and Stack under ``paths`` (files or folders), in file order.

    ``boundary``: the operator's settings (policy, source root, ...); default: no policy, the rules
    that always apply. ``enforce=False`` skips the boundary checks (``status`` only reads).
    ``complete``: every manifest must be read, so a folder that is skipped (a symlink) is an error
    too (``--prune-orphans``, which would otherwise take a skipped set for deleted).

    Raises ``ManifestError`` with every problem found (boundary problems included), or
    ``PolicyViolation`` when the manifests are sound but cross the boundary. Finding no SecretSet
    (nor Stack) at all is a problem too (most likely a wrong path).
    """
    found = _gather(paths, boundary or guard.Boundary(), enforce=enforce, complete=complete)
    problems = [f.problem for f in found.problems if not f.policy]
    violations = [f.problem for f in found.problems if f.policy]
    if problems:
        raise ManifestError(_in_file_order(problems + violations, found.loaded))
    if violations:
        raise PolicyViolation(violations)
    log.debug("loaded %s from %s", count(len(found.loaded), "set"), count(found.files, "file"))
    return Manifests(sets=tuple(entry.secret_set for entry in found.loaded), stacks=tuple(found.stacks))


def stack_problems(stacks: Sequence[StackSpec], sets: Sequence[SecretSet]) -> list[Problem]:
    """Stacks declared twice, and every conflict of a stack's compose files with the sets' grants."""
    return [problem for problem, _ in stack_problems_by_stack(stacks, sets)]


def stack_problems_by_stack(
    stacks: Sequence[StackSpec], sets: Sequence[SecretSet]
) -> list[tuple[Problem, str]]:
    """:func:`stack_problems`, each with the name of the stack it is about."""
    problems: list[tuple[Problem, str]] = []
    first: dict[str, StackSpec] = {}
    for stack in stacks:
        other = first.setdefault(stack.name, stack)
        if other is not stack:
            where = other.origin or stack.origin
            declared = f"{where.file}:{where.line}" if where is not None else "the command line"
            origin = stack.origin or other.origin
            assert origin is not None
            problem = Problem(
                origin.file,
                origin.line,
                origin.path,
                f"stack '{stack.name}' is also declared by {declared}; a stack has one set of compose "
                "files: deploy it from one place",
            )
            problems.append((problem, stack.name))
        problems += [(problem, stack.name) for problem in check_grants(stack, sets)]
    return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class Isolated:
    """What :func:`load_isolated` found: the sets that loaded, and the problems of the others."""

    sets: tuple[SecretSet, ...]
    """The sets without any problem, in file order."""
    stacks: tuple[StackSpec, ...] = ()
    """The Stack manifests without any problem, in file order."""
    failing_stacks: Mapping[str, ProblemsError] = field(default_factory=dict)
    """Stack name → every problem of that Stack manifest (its compose files, its grants, the policy's
    ``deploy``): the stack is not deployed; the sets are reconciled as if it were not declared."""
    failing: Mapping[str, ProblemsError] = field(default_factory=dict)
    """Set name → every problem of that set: a :class:`ManifestError`, or a :class:`PolicyViolation`
    when the set is sound but crosses the boundary. Sorted by set name."""
    unattributed: ManifestError | None = None
    """Problems that name no set: a file that cannot be read or parsed as YAML (whatever sets it holds,
    before or after the error), a document whose set name cannot be read, a path that is missing or
    not searched, no set at all. The swarm does not record which file a set came from, so the caller
    must take every set it did not load for possibly declared there (``converge``: held back)."""


def load_isolated(
    paths: Sequence[Path], boundary: guard.Boundary | None = None, *, complete: bool = False
) -> Isolated:
    """Like :func:`load`, but one set's problems do not stop the others (the long-running loop).

    Each problem is given to the set it is about: the set named by the document's ``metadata.name``
    (when that can be read and is a valid set name), both sets of a clash between two, the set whose
    policy rule is crossed. A file whose YAML cannot be parsed gives its problem to every set found in
    it before the error, and also leaves it unattributed, as later documents are unknown. A set that
    has any problem is left out of :attr:`Isolated.sets` however many documents declare it.
    """
    found = _gather(paths, boundary or guard.Boundary(), enforce=True, complete=complete)
    by_set: dict[str, list[_Found]] = {}
    by_stack: dict[str, list[_Found]] = {}
    unattributed: list[Problem] = []
    for item in found.problems:
        for name in item.sets:
            by_set.setdefault(name, []).append(item)
        for name in item.stacks:
            by_stack.setdefault(name, []).append(item)
        if item.unattributed:
            unattributed.append(item.problem)
    failing: dict[str, ProblemsError] = {}
    for name in sorted(by_set):
        items = by_set[name]
        failing[name] = _error(items, _in_file_order([f.problem for f in items], found.loaded))
    sets = tuple(e.secret_set for e in found.loaded if e.secret_set.name not in failing)
    failing_stacks: dict[str, ProblemsError] = {}
    for name in sorted(by_stack):
        failing_stacks[name] = _error(by_stack[name], [f.problem for f in by_stack[name]])
    if failing or unattributed:
        log.debug("loaded %s; %s failing", count(len(sets), "set"), count(len(failing), "set"))
    return Isolated(
        sets=sets,
        stacks=tuple(s for s in found.stacks if s.name not in failing_stacks),
        failing_stacks=failing_stacks,
        failing=failing,
        unattributed=ManifestError(_in_file_order(unattributed, found.loaded)) if unattributed else None,
    )


def _error(items: Sequence[_Found], problems: list[Problem]) -> ProblemsError:
    """``problems`` (of ``items``) as one error: a :class:`PolicyViolation` when every one is a boundary
    problem (the manifests are sound), else a :class:`ManifestError`."""
    return PolicyViolation(problems) if all(f.policy for f in items) else ManifestError(problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Found:
    """One problem, and whom it is about."""

    problem: Problem
    sets: frozenset[str] = frozenset()
    """The sets the problem is about (``load_isolated`` holds them back)."""
    stacks: frozenset[str] = frozenset()
    """The Stack manifests the problem is about (``load_isolated`` does not deploy them)."""
    unattributed: bool = False
    """The problem may be about sets nobody can name (a file that cannot be parsed, ...)."""
    policy: bool = False
    """A boundary problem (:class:`PolicyViolation`), not a manifest problem."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Gathered:
    loaded: list[LoadedSet]
    stacks: list[StackSpec]
    problems: list[_Found]
    files: int


def _gather(paths: Sequence[Path], boundary: guard.Boundary, *, enforce: bool, complete: bool) -> _Gathered:
    """Every set and every problem, each problem with the sets it is about, in the order ``load``
    reports them."""
    walk: list[Problem] = []
    files = find_files(paths, walk, boundary.source_root, complete=complete)
    found = [_Found(problem=p, unattributed=True) for p in walk]
    loaded: list[LoadedSet] = []
    stacks: list[StackSpec] = []
    realpath = RealPaths()
    for file, root in files:
        for entry in _load_file(file, root, found, realpath):
            if isinstance(entry, StackSpec):
                stacks.append(entry)
            else:
                loaded.append(entry)
    if not loaded and not stacks and not found:
        where = ", ".join(display_path(p) for p in paths) or "(no path)"
        problem = Problem(
            where,
            None,
            "",
            (
                f"no SecretSet found in {count(len(files), 'YAML file')}: check the path, and that each "
                f"manifest starts with `apiVersion: {API_VERSION}` and `kind: {KIND}`"
            ),
        )
        found.append(_Found(problem=problem, unattributed=True))
    found += [_Found(problem=p, sets=sets) for p, sets in cross_problems_by_set(loaded)]
    all_sets = [entry.secret_set for entry in loaded]
    found += [
        _Found(problem=p, stacks=frozenset({name})) for p, name in stack_problems_by_stack(stacks, all_sets)
    ]
    if enforce:
        for entry in loaded:
            sets = frozenset({entry.secret_set.name})
            found += [
                _Found(problem=p, sets=sets, policy=True)
                for p in guard.check_sets([entry.secret_set], boundary)
            ]
        for stack in stacks:
            found += [
                _Found(problem=p, stacks=frozenset({stack.name}), policy=True)
                for p in guard.check_stacks([stack], boundary)
            ]
    return _Gathered(loaded=loaded, stacks=stacks, problems=found, files=len(files))


def _in_file_order(problems: list[Problem], loaded: Sequence[LoadedSet]) -> list[Problem]:
    order = {entry.file: index for index, entry in reversed(list(enumerate(loaded)))}
    return sorted(problems, key=lambda p: order.get(p.file, -1))


def find_files(
    paths: Sequence[Path],
    problems: list[Problem],
    explicit_root: Path | None = None,
    *,
    complete: bool = False,
) -> list[tuple[Path, Path]]:
    """(file, its source root) of the YAML files to read, sorted within each given folder, each once.

    Missing paths are problems, and so are manifests in a folder that resolve outside its source
    root (a symlink out of the repository). With ``complete``, so is a symlinked folder (not followed).
    """
    seen: set[Path] = set()
    files: list[tuple[Path, Path]] = []
    for given in paths:
        root = source_root(given, explicit_root)
        if given.is_dir():
            skipped: list[Path] = []
            found = sorted(_walk_yaml(given, skipped), key=lambda p: p.as_posix())
            for folder in skipped:
                message = "is a symlink to a folder, which is not searched for manifests"
                if complete:
                    problems.append(
                        Problem(
                            display_path(folder),
                            None,
                            "",
                            f"{message}; --prune-orphans needs every manifest read: move them into a "
                            "real folder",
                        )
                    )
                else:
                    log.warning("%s %s", display_path(folder), message)
            inside = []
            for file in found:
                if resolve_inside(file, root) is None:
                    problems.append(
                        Problem(
                            display_path(file),
                            None,
                            "",
                            f"resolves to {os.path.realpath(file)}, outside the source root {root}: "
                            "a manifest must be a file of the repository, not a symlink out of it; not read",
                        )
                    )
                else:
                    inside.append(file)
            found = inside
        elif given.is_file():
            found = [given]  # named explicitly by the operator: read it whatever its extension
        else:
            problems.append(Problem(display_path(given), None, "", "no such file or folder"))
            continue
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append((file, root))
    return files


def _walk_yaml(root: Path, skipped: list[Path]) -> Iterator[Path]:
    # os.walk does not follow symlinked folders, so a link loop cannot make the walk endless.
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        skipped += [Path(folder) / d for d in subfolders if os.path.islink(os.path.join(folder, d))]
        for name in names:
            if name.endswith(YAML_SUFFIXES):
                yield Path(folder) / name


def _load_file(
    file: Path, root: Path, found: list[_Found], realpath: RealPaths
) -> list[LoadedSet | StackSpec]:
    shown = display_path(file)

    def unreadable(message: str) -> list[LoadedSet | StackSpec]:
        found.append(_Found(problem=Problem(shown, None, "", message), unattributed=True))
        return []

    try:
        with file.open("rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)  # never more, whatever the file claims to be
        if len(raw) > MAX_FILE_BYTES:
            return unreadable(
                f"larger than {MAX_FILE_BYTES // 1024} KiB, the limit for a YAML file in a manifest "
                "folder: a manifest is a few KiB; split it, or keep large files out of the manifest "
                "folders"
            )
        text = raw.decode("utf-8-sig")
    except OSError as exc:
        return unreadable(f"cannot read the file: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        return unreadable(f"not UTF-8 text (bad byte at offset {exc.start}); manifests must be UTF-8 YAML")
    loaded: list[LoadedSet | StackSpec] = []
    named: set[str] = set()  # every set this file was seen to declare, loaded or not
    try:
        for index, composed in enumerate(compose_documents(text)):
            problems: list[Problem] = []
            entry = _load_document(file, root, shown, index, composed, problems, realpath)
            if _is_stack(composed):  # a Stack's problems are its own: no set is held back for them
                stack = entry.name if isinstance(entry, StackSpec) else composed.text_at("metadata", "name")
                stacks = frozenset({stack} if stack else ())
                found += [_Found(problem=p, stacks=stacks, unattributed=not stack) for p in problems]
                if entry is not None:
                    loaded.append(entry)
                continue
            name = entry.secret_set.name if isinstance(entry, LoadedSet) else _set_name(composed)
            if name is not None:
                named.add(name)
            sets = frozenset({name} if name is not None else ())
            found += [_Found(problem=p, sets=sets, unattributed=name is None) for p in problems]
            if entry is not None:
                loaded.append(entry)
    except YamlProblem as exc:
        # The file is broken: every set it was seen to declare is held back, and so is whatever
        # it declares after the error, which nobody can name.
        problem = Problem(shown, exc.line, format_path(exc.path), exc.message)
        found.append(_Found(problem=problem, sets=frozenset(named), unattributed=True))
    return loaded


def _is_stack(composed: ComposedDocument) -> bool:
    kind = composed.top_level_text("kind")
    return kind is not None and kind.lower() == STACK_KIND.lower()


def _set_name(composed: ComposedDocument) -> str | None:
    """The document's ``metadata.name`` when it can be read without building it and is a valid set
    name (a problem is then that set's), else None."""
    name = composed.text_at("metadata", "name")
    return name if name is not None and len(name) <= MAX_SET_NAME and _SET_NAME.fullmatch(name) else None


def _load_document(
    file: Path,
    root: Path,
    shown: str,
    index: int,
    composed: ComposedDocument,
    problems: list[Problem],
    realpath: RealPaths,
) -> LoadedSet | StackSpec | None:
    api = composed.top_level_text("apiVersion")
    kind = composed.top_level_text("kind")
    if kind is not None and kind.lower() == POLICY_KIND.lower():
        problems.append(
            Problem(
                shown,
                composed.line,
                "",
                "a Policy is never read from the manifest folders (whoever writes manifests must not "
                "set their own limits): the operator gives it to the reconciler with --policy; move it "
                "out of the manifests",
            )
        )
        return None
    if api is None and kind is not None and kind.lower() in _OUR_KINDS:
        problems.append(
            Problem(
                shown,
                composed.line,
                "",
                (f"missing required field 'apiVersion': add `apiVersion: {API_VERSION}`"),
            )
        )
        return None
    ours = api is not None and (api.startswith(API_GROUP) or _looks_like_ours(api))
    if not ours and not (kind is not None and kind.lower() in _OUR_KINDS):
        log.debug("%s: skipping document %d: not a swarm-secrets manifest", shown, index + 1)
        return None
    try:
        doc = composed.build()
    except YamlProblem as exc:
        problems.append(Problem(shown, exc.line, format_path(exc.path), exc.message))
        return None
    assert isinstance(doc.data, dict)  # top_level_text found a key, so the root is a mapping
    if api != API_VERSION:
        problems.append(
            _at(
                shown,
                doc,
                ("apiVersion",),
                (
                    f"unknown apiVersion '{api}': this swarm-secrets reads {API_VERSION}; "
                    "upgrade swarm-secrets or fix the version (a document that looks like a manifest "
                    "is never skipped: a skipped set would look deleted)"
                ),
            )
        )
        return None
    kind = doc.data.get("kind", KIND)
    if kind == STACK_KIND:
        return _load_stack(file, root, shown, doc, problems)
    if kind != KIND:
        problems.append(
            _at(
                shown,
                doc,
                ("kind",),
                (
                    f"kind {kind!r} is not supported by {API_VERSION}: use `kind: {KIND}` or "
                    f"`kind: {STACK_KIND}`"
                ),
            )
        )
        return None
    decimal = _decimal_modes(shown, doc)
    found = [
        _at(shown, doc, path, message)
        for path, message in schema_problems(doc.data)
        if format_path(path) not in {p.path for p in decimal}
    ]
    if found or decimal:
        problems += sorted(found + decimal, key=lambda p: p.line or 0)
        return None
    entry, source_problems = _build(file, root, shown, doc, realpath)
    problems += source_problems
    return entry


def _load_stack(
    file: Path, root: Path, shown: str, doc: Document, problems: list[Problem]
) -> StackSpec | None:
    """A ``kind: Stack`` document with its compose files read (interpolated with ``spec.env`` only)."""
    found = schema_problems(doc.data, STACK_SCHEMA_FILE)
    if found:
        problems += sorted(
            (_at(shown, doc, path, message) for path, message in found), key=lambda p: p.line or 0
        )
        return None
    data = cast(Mapping[str, Any], doc.data)
    name: str = data["metadata"]["name"]
    spec: Mapping[str, Any] = data["spec"]
    folder = os.path.dirname(os.path.abspath(file))
    files: list[Path] = []
    ok = True
    for index, written in enumerate(spec["compose"]):
        path = _under(folder, written)
        if resolve_inside(path, root) is None:
            ok = False
            problems.append(
                _at(
                    shown,
                    doc,
                    ("spec", "compose", index),
                    f"{written} is outside the source root {root}: a Stack deploys compose files of the "
                    "repository that holds it; move the file there",
                )
            )
        files.append(path)
    if not ok:
        return None
    environment = {str(k): str(v) for k, v in (spec.get("env") or {}).items()}
    line = doc.line_of(("spec", "compose"))
    read = read_compose(
        files, environment, problems, where=lambda m: f"{m} (compose file of stack '{name}', {shown}:{line})"
    )
    if read is None:
        return None
    compose, raws = read
    real_root = os.path.realpath(root)
    for host_file in compose.host_files:
        if inside(os.path.realpath(host_file.path), real_root) is None:
            origin = host_file.origin
            problems.append(
                Problem(
                    origin.file,
                    origin.line,
                    origin.path,
                    f"docker stack deploy would read {host_file.path} ({host_file.what}), outside the source "
                    f"root {root}: stack '{name}' may only name files of its repository",
                )
            )
    prune = bool(spec.get("prune", False))
    resolve = spec.get("resolveImage")
    stack = StackSpec(
        name=name,
        compose=compose,
        files=tuple(files),
        content="",
        environment=environment,
        prune=prune,
        resolve_image=resolve,
        origin=Origin(file=shown, line=doc.line_of(("metadata", "name")), path="metadata.name"),
        location=location(file, root),
    )
    return replace(stack, content=stack.digest(raws))


def _at(shown: str, doc: Document, path: PathKey, message: str) -> Problem:
    return Problem(shown, doc.line_of(path), format_path(path), message)


def _looks_like_ours(api: str) -> bool:
    """``swarm-secret/v1``, ``Swarm-Secrets/v1``, ``swarmsecrets.io/v1``: a typo of ours, not another's."""
    return re.sub(r"[^a-z]", "", api.lower()).startswith("swarmsecret")


def _decimal_modes(shown: str, doc: Document) -> list[Problem]:
    """``mode: 440`` (YAML reads a decimal 440, i.e. 0o670): a problem suggesting ``"0440"``."""
    problems = []
    for path, token in doc.int_tokens.items():
        if len(path) != 6 or path[:2] != ("spec", "secrets") or path[3] != "services" or path[5] != "mode":
            continue
        if _OCTAL_TOKEN.fullmatch(token):
            continue
        value = _value_at(doc.data, path)
        if not isinstance(value, int):
            continue
        if token.isdigit() and len(token) <= 3 and set(token) <= set("01234567"):
            suggestion = "0" + token.zfill(3)  # what was meant: the digits, as octal
        else:
            suggestion = f"0{value & 0o777:03o}"  # the same bits, written as octal
        problems.append(
            _at(
                shown,
                doc,
                path,
                f"mode {token} is a decimal number (YAML reads it as {value:#o}), not an octal mode: "
                f'write the mode as a quoted octal string, like "{suggestion}"',
            )
        )
    return problems


def _value_at(data: object, path: PathKey) -> object:
    for part in path:
        if isinstance(part, int) and isinstance(data, list) and part < len(data):
            data = data[part]
        elif isinstance(part, str) and isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return None
    return data


# --- building (the document is schema-valid from here on) -------------------------------------------


def _build(
    file: Path, root: Path, shown: str, doc: Document, realpath: RealPaths
) -> tuple[LoadedSet, list[Problem]]:
    """The set, and the problems of sources that resolve outside the source root."""
    data = cast(Mapping[str, Any], doc.data)  # the schema has checked every shape used below
    name: str = data["metadata"]["name"]
    spec: Mapping[str, Any] = data["spec"]
    folder = os.path.dirname(os.path.abspath(file))
    secrets: list[SecretSpec] = []
    short: set[tuple[str, int]] = set()
    problems: list[Problem] = []
    for secret_name, raw in (spec.get("secrets") or {}).items():
        path: PathKey = ("spec", "secrets", secret_name)
        grants = []
        for index, item in enumerate(raw.get("services") or ()):
            origin = _origin(shown, doc, (*path, "services", index), item)
            if isinstance(item, str):
                short.add((secret_name, index))
                grants.append(ServiceGrant(service=item, target=secret_name, origin=origin))
            else:
                grants.append(
                    ServiceGrant(
                        service=item["service"],
                        target=item.get("target", secret_name),
                        uid=str(item.get("uid", "0")),
                        gid=str(item.get("gid", "0")),
                        mode=parse_mode(item.get("mode", 0o444)),
                        optional=bool(item.get("optional", False)),
                        origin=origin,
                    )
                )
        source = _source(raw["source"], folder, root, shown, doc, (*path, "source"), realpath)
        if isinstance(source, Problem):
            problems.append(source)
            continue
        secrets.append(
            SecretSpec(
                set_name=name,
                secret=secret_name,
                source=source,
                labels=dict(raw.get("labels") or {}),
                grants=tuple(grants),
                # the schema checked the period's shape
                rotate=schedule.rotation(raw["rotate"]["every"]) if "rotate" in raw else None,
                origin=Origin(file=shown, line=doc.line_of(path), path=format_path(path)),
            )
        )
    secret_set = SecretSet(
        name=name,
        keep=int(spec.get("keep", 0)),
        secrets=tuple(secrets),
        origin=Origin(file=shown, line=doc.line_of(("metadata", "name")), path="metadata.name"),
        location=location(file, root),
    )
    entry = LoadedSet(secret_set=secret_set, file=shown, document=doc, short_grants=frozenset(short))
    return entry, problems


def _origin(shown: str, doc: Document, path: PathKey, item: object) -> Origin:
    fields = (
        {key: line for key in item if (line := doc.lines.get((*path, key))) is not None}
        if isinstance(item, dict)
        else {}
    )
    return Origin(file=shown, line=doc.line_of(path), path=format_path(path), fields=fields)


def _source(
    raw: Mapping[str, Any],
    folder: str,
    root: Path,
    shown: str,
    doc: Document,
    path: PathKey,
    realpath: RealPaths,
) -> Source | Problem:
    if "env" in raw:
        origin = Origin(file=shown, line=doc.line_of((*path, "env")), path=format_path((*path, "env")))
        return EnvSource(var=raw["env"], origin=origin)
    if "generate" in raw:
        at_generate: PathKey = (*path, "generate")
        origin = Origin(file=shown, line=doc.line_of(at_generate), path=format_path(at_generate))
        spec = raw["generate"]
        if "bytes" in spec:
            return GenerateSource(charset=RAW_BYTES, length=int(spec["bytes"]), origin=origin)
        return GenerateSource(charset=spec.get("charset", "alnum"), length=int(spec["length"]), origin=origin)
    at: PathKey = (*path, "sops", "file") if "sops" in raw else (*path, "file")
    written = raw["sops"]["file"] if "sops" in raw else raw["file"]
    origin = Origin(file=shown, line=doc.line_of(at), path=format_path(at))
    file = _under(folder, written)
    if inside(realpath(file), str(root)) is None:
        real = os.path.realpath(file)
        via = f" (through a symlink, to {real})" if real != str(file) else ""
        return Problem(
            shown,
            origin.line,
            origin.path,
            f"{written} is outside the source root {root}{via}: a source must be a file of the "
            "repository that holds the manifests; move it there, or have the operator set --source-root",
        )
    if "sops" in raw:
        key = raw["sops"].get("key")
        return SopsSource(
            file=file,
            key=None if key is None else tuple(key) if isinstance(key, list) else tuple(key.split(".")),
            root=root,
            origin=origin,
        )
    return FileSource(file=file, root=root, origin=origin)


def _under(folder: str, relative: str) -> Path:
    # normpath, not resolve(): keep the path the operator wrote (symlinks and all), only made absolute.
    # Joined as text, one Path per source: building Paths dominated loading 1,000 sources.
    return Path(os.path.normpath(os.path.join(folder, relative)))


def parse_mode(value: int | str) -> int:
    """A schema-valid mode (int, or octal text like ``"0440"``/``"440"``/``"0o440"``) as an int."""
    if isinstance(value, int):
        return value
    return int(value.removeprefix("0o"), 8)
