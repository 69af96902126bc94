"""Load SecretSet manifests: find the files, read them with line numbers, validate, build model values.

``load(paths)`` is the only entry point. It reads every ``*.yaml``/``*.yml`` under the given folders
(and any file given by name), keeps the documents whose ``apiVersion`` is ``swarm-secrets/…``, checks
them against ``schemas/manifest.v1.json`` (see ``schema.py``) and the cross-file rules (see
``crosscheck.py``), and returns frozen :class:`~reconciler.core.model.SecretSet` values. Every problem in
every file is collected and raised together as one :class:`~reconciler.errors.ManifestError`, each
located as ``file:line: path``.

Other YAML documents (a sops-encrypted file, ``.sops.yaml``, a compose file) are skipped without
being built. Hidden folders (``.git``, ``.github``) are not searched.

This module must not read secret values: sources are recorded (paths made absolute), never opened.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from reconciler.core.model import (
    EnvSource,
    FileSource,
    Origin,
    SecretSet,
    SecretSpec,
    ServiceGrant,
    SopsSource,
    Source,
)
from reconciler.display import display_path
from reconciler.errors import ManifestError, Problem
from reconciler.manifests.crosscheck import LoadedSet, cross_problems
from reconciler.manifests.schema import schema_problems
from reconciler.manifests.yamlload import (
    ComposedDocument,
    Document,
    PathKey,
    YamlProblem,
    compose_documents,
    format_path,
)

log = logging.getLogger(__name__)

API_GROUP = "swarm-secrets/"
API_VERSION = "swarm-secrets/v1"
KIND = "SecretSet"
DEFAULT_PATH = Path("manifests")
"""Where commands look when no path is given."""
YAML_SUFFIXES = (".yaml", ".yml")


def load(paths: Sequence[Path]) -> tuple[SecretSet, ...]:
    """Every SecretSet under ``paths`` (files or folders), in file order; raises ``ManifestError``
    with every problem found. Finding no SecretSet at all is a problem too (most likely a wrong path)."""
    problems: list[Problem] = []
    files = find_files(paths, problems)
    loaded: list[LoadedSet] = []
    for file in files:
        loaded += _load_file(file, problems)
    if not loaded and not problems:
        where = ", ".join(display_path(p) for p in paths) or "(no path)"
        problems.append(
            Problem(
                where,
                None,
                "",
                (
                    f"no SecretSet found in {len(files)} YAML file(s): check the path, and that each "
                    f"manifest starts with `apiVersion: {API_VERSION}` and `kind: {KIND}`"
                ),
            )
        )
    problems += cross_problems(loaded)
    if problems:
        raise ManifestError(problems)
    log.debug("loaded %d set(s) from %d file(s)", len(loaded), len(files))
    return tuple(entry.secret_set for entry in loaded)


def find_files(paths: Sequence[Path], problems: list[Problem]) -> list[Path]:
    """The YAML files to read, sorted within each given folder, each once; missing paths are problems."""
    seen: set[Path] = set()
    files: list[Path] = []
    for given in paths:
        if given.is_dir():
            found = sorted(_walk_yaml(given), key=lambda p: p.as_posix())
        elif given.is_file():
            found = [given]  # named explicitly: read it whatever its extension
        else:
            problems.append(Problem(display_path(given), None, "", "no such file or folder"))
            continue
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files


def _walk_yaml(root: Path) -> Iterator[Path]:
    # os.walk does not follow symlinked folders, so a link loop cannot make the walk endless.
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in names:
            if name.endswith(YAML_SUFFIXES):
                yield Path(folder) / name


def _load_file(file: Path, problems: list[Problem]) -> list[LoadedSet]:
    shown = display_path(file)
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        problems.append(Problem(shown, None, "", f"cannot read the file: {exc.strerror or exc}"))
        return []
    except UnicodeDecodeError as exc:
        problems.append(
            Problem(
                shown,
                None,
                "",
                (f"not UTF-8 text (bad byte at offset {exc.start}); manifests must be UTF-8 YAML"),
            )
        )
        return []
    loaded: list[LoadedSet] = []
    try:
        for index, composed in enumerate(compose_documents(text)):
            entry = _load_document(file, shown, index, composed, problems)
            if entry is not None:
                loaded.append(entry)
    except YamlProblem as exc:
        problems.append(Problem(shown, exc.line, format_path(exc.path), exc.message))
    return loaded


def _load_document(
    file: Path, shown: str, index: int, composed: ComposedDocument, problems: list[Problem]
) -> LoadedSet | None:
    api = composed.top_level_text("apiVersion")
    if api is None and composed.top_level_text("kind") == KIND:
        problems.append(
            Problem(
                shown,
                composed.line,
                "",
                (f"missing required field 'apiVersion': add `apiVersion: {API_VERSION}`"),
            )
        )
        return None
    if api is None or not api.startswith(API_GROUP):
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
                    "upgrade swarm-secrets or fix the version"
                ),
            )
        )
        return None
    kind = doc.data.get("kind", KIND)
    if kind != KIND:
        problems.append(
            _at(
                shown,
                doc,
                ("kind",),
                (f"kind {kind!r} is not supported by {API_VERSION}: use `kind: {KIND}`"),
            )
        )
        return None
    found = [_at(shown, doc, path, message) for path, message in schema_problems(doc.data)]
    if found:
        problems += sorted(found, key=lambda p: p.line or 0)
        return None
    return _build(file, shown, doc)


def _at(shown: str, doc: Document, path: PathKey, message: str) -> Problem:
    return Problem(shown, doc.line_of(path), format_path(path), message)


# --- building (the document is schema-valid from here on) -------------------------------------------


def _build(file: Path, shown: str, doc: Document) -> LoadedSet:
    data = cast(Mapping[str, Any], doc.data)  # the schema has checked every shape used below
    name: str = data["metadata"]["name"]
    spec: Mapping[str, Any] = data["spec"]
    folder = os.path.dirname(os.path.abspath(file))
    secrets: list[SecretSpec] = []
    short: set[tuple[str, int]] = set()
    for secret_name, raw in (spec.get("secrets") or {}).items():
        path: PathKey = ("spec", "secrets", secret_name)
        grants = []
        for index, item in enumerate(raw.get("services") or ()):
            if isinstance(item, str):
                short.add((secret_name, index))
                grants.append(ServiceGrant(service=item, target=secret_name))
            else:
                grants.append(
                    ServiceGrant(
                        service=item["service"],
                        target=item.get("target", secret_name),
                        uid=str(item.get("uid", "0")),
                        gid=str(item.get("gid", "0")),
                        mode=parse_mode(item.get("mode", 0o444)),
                    )
                )
        secrets.append(
            SecretSpec(
                set_name=name,
                name=secret_name,
                source=_source(raw["source"], folder),
                labels=dict(raw.get("labels") or {}),
                grants=tuple(grants),
                origin=Origin(file=shown, line=doc.line_of(path), path=format_path(path)),
            )
        )
    secret_set = SecretSet(
        name=name,
        keep=int(spec.get("keep", 0)),
        secrets=tuple(secrets),
        origin=Origin(file=shown, line=doc.line_of(("metadata", "name")), path="metadata.name"),
    )
    return LoadedSet(secret_set=secret_set, file=shown, document=doc, short_grants=frozenset(short))


def _source(raw: Mapping[str, Any], folder: str) -> Source:
    if "sops" in raw:
        key = raw["sops"].get("key")
        return SopsSource(
            file=_under(folder, raw["sops"]["file"]),
            key=None if key is None else tuple(key) if isinstance(key, list) else tuple(key.split(".")),
        )
    if "file" in raw:
        return FileSource(file=_under(folder, raw["file"]))
    return EnvSource(var=raw["env"])


def _under(folder: str, relative: str) -> Path:
    # normpath, not resolve(): keep the path the operator wrote (symlinks and all), only made absolute.
    # Joined as text, one Path per source: building Paths dominated loading 1,000 sources.
    return Path(os.path.normpath(os.path.join(folder, relative)))


def parse_mode(value: int | str) -> int:
    """A schema-valid mode (int, or octal text like ``"0440"``/``"440"``/``"0o440"``) as an int."""
    if isinstance(value, int):
        return value
    return int(value.removeprefix("0o"), 8)
