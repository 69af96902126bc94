"""Read compose files the way ``docker stack deploy`` does, as far as secrets and the trust rules go.

swarm-secrets never re-implements compose for deploying: ``docker stack deploy`` itself reads the
files and the override (``engine/stackdeploy.py``). What it needs to know *before* deploying, with
the file and line of every part so that a conflict can name both files and lines, is read here into
a :class:`~reconciler.core.stacks.Compose`:

* which services the files define, which top-level secret each mounts, at which target and with
  which uid, gid and mode;
* the top-level secrets (``file:``, ``external``, ``name:``);
* the files on this host docker will read (a secret's or config's ``file:``, an ``env_file``);
* what could let a service reach the engine (bind mounts, the names of its variables).

The rules are docker/cli's (``cli/compose/loader``, ``cli/compose/convert``, ``cli/compose/template``
of the 20.10 CLI that Debian ships and the image carries):

* **interpolation** of every string value (never a key) with the given variables: ``$$`` is a ``$``;
  ``$VAR`` and ``${VAR}``; ``${VAR:-default}`` (unset or empty), ``${VAR-default}`` (unset),
  ``${VAR:?message}`` / ``${VAR?message}`` (an error); an unset variable is empty. The same pattern
  and the same order of the rules as ``template.go``, odd corners included;
* **merging** in file order: services by name, a service's ``secrets`` by ``source`` (a later entry
  replaces an earlier one), its volumes and ``env_file`` appended, its environment merged; a
  top-level secret, config or volume of a later file replaces the earlier one whole;
* a secret reference's **target** is ``target``, else the compose key (so ``/run/secrets/<key>``),
  never the top-level ``name:``; uid and gid default to "0", the mode to 0444 (a YAML integer:
  ``0440`` is octal, as compose reads it);
* relative paths (``file:``, ``env_file``, bind mounts) are relative to the **first** file's folder.

Only what it reads is checked (the rest is docker's business when it deploys); every problem is
collected with its file and line. It reads the compose files and the names (never the values) in an
``env_file``; it logs nothing of their content.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from reconciler.core.model import Origin
from reconciler.core.stacks import (
    DEFAULT_GID,
    DEFAULT_MODE,
    DEFAULT_UID,
    Compose,
    ComposeSecret,
    ComposeService,
    HostFile,
    SecretUse,
    StackSpec,
)
from reconciler.display import display_path
from reconciler.errors import ConfigError, ManifestError, Problem
from reconciler.manifests.yamlload import Document, PathKey, YamlProblem, compose_documents, format_path

__all__ = ["MAX_COMPOSE_BYTES", "interpolate", "read_compose", "stack_from_files"]

MAX_COMPOSE_BYTES = 1024 * 1024
"""A compose file is a few KiB; more is the wrong file."""

# docker/cli cli/compose/template/template.go, as is (the `named` form swallows a default too).
_SUBSTITUTION = r"[_a-z][_a-z0-9]*(?::?[-?][^}]*)?"
_PATTERN = re.compile(
    rf"\$(?i:(?P<escaped>\$)|(?P<named>{_SUBSTITUTION})|{{(?P<braced>{_SUBSTITUTION})}}|(?P<invalid>))"
)


class _TemplateError(Exception):
    pass


def _partition(text: str, sep: str) -> tuple[str, str]:
    name, _, rest = text.partition(sep)
    return name, rest


def _substitute(substitution: str, mapping: Mapping[str, str]) -> str:
    """One ``${...}``, by template.go's rules in its order: soft default, hard default, required
    non-empty, required, else the plain lookup."""
    if ":-" in substitution:
        name, default = _partition(substitution, ":-")
        value = mapping.get(name)
        return default if not value else value
    if "-" in substitution:
        name, default = _partition(substitution, "-")
        return mapping.get(name, default)
    for sep, valid in ((":?", bool), ("?", lambda v: True)):
        if sep in substitution:
            name, message = _partition(substitution, sep)
            value = mapping.get(name)
            if value is None or not valid(value):
                raise _TemplateError(f"required variable {name} is missing a value: {message}")
            return value
    return mapping.get(substitution, "")


def interpolate(text: str, mapping: Mapping[str, str]) -> str:
    """``text`` with its variables substituted as docker/cli does; :class:`ValueError` for an invalid
    template or a missing required variable (the message names the variable, never a value)."""
    if "$" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        substitution = match.group("named") or match.group("braced")
        if not substitution:
            raise _TemplateError("a `$` that starts no variable: write `$$` for a literal dollar sign")
        return _substitute(substitution, mapping)

    try:
        return _PATTERN.sub(replace, text)
    except _TemplateError as exc:
        raise ValueError(str(exc)) from None


# --- one file ----------------------------------------------------------------------------------------


@dataclass
class _Service:
    name: str
    origin: Origin
    secrets: dict[str, tuple[object, Origin]] = field(default_factory=dict)
    """source -> (the entry, where); later files replace."""
    volumes: list[tuple[object, Origin]] = field(default_factory=list)
    env_names: set[str] = field(default_factory=set)
    env_files: list[tuple[str, Origin]] = field(default_factory=list)


@dataclass
class _Merged:
    version: str | None = None
    services: dict[str, _Service] = field(default_factory=dict)
    secrets: dict[str, tuple[dict[str, object], Origin]] = field(default_factory=dict)
    configs: dict[str, tuple[dict[str, object], Origin]] = field(default_factory=dict)
    volumes: dict[str, dict[str, object]] = field(default_factory=dict)


class _File:
    """One compose file being read: its document and how to locate a part of it."""

    def __init__(self, shown: str, doc: Document, problems: list[Problem]) -> None:
        self.shown = shown
        self.doc = doc
        self.problems = problems

    def origin(self, path: PathKey) -> Origin:
        return Origin(file=self.shown, line=self.doc.line_of(path), path=format_path(path))

    def problem(self, path: PathKey, message: str) -> None:
        self.problems.append(Problem(self.shown, self.doc.line_of(path), format_path(path), message))


def _interpolate_all(data: object, path: PathKey, mapping: Mapping[str, str], file: _File) -> object:
    if isinstance(data, str):
        try:
            return interpolate(data, mapping)
        except ValueError as exc:
            file.problem(path, f"cannot interpolate: {exc}")
            return ""
    if isinstance(data, dict):
        return {k: _interpolate_all(v, (*path, k), mapping, file) for k, v in data.items()}
    if isinstance(data, list):
        return [_interpolate_all(v, (*path, i), mapping, file) for i, v in enumerate(data)]
    return data


def _read(path: Path, problems: list[Problem]) -> tuple[_File, dict[str, object], bytes] | None:
    shown = display_path(path)
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_COMPOSE_BYTES + 1)
    except OSError as exc:
        problems.append(Problem(shown, None, "", f"cannot read the compose file: {exc.strerror or exc}"))
        return None
    if len(raw) > MAX_COMPOSE_BYTES:
        problems.append(
            Problem(shown, None, "", f"larger than {MAX_COMPOSE_BYTES // 1024} KiB: not a compose file")
        )
        return None
    try:
        text = raw.decode("utf-8-sig")
        documents = list(compose_documents(text))
        if not documents:
            problems.append(Problem(shown, None, "", "empty: a compose file needs at least `services:`"))
            return None
        doc = documents[0].build()  # docker reads the first document only
    except UnicodeDecodeError as exc:
        problems.append(Problem(shown, None, "", f"not UTF-8 text (bad byte at offset {exc.start})"))
        return None
    except YamlProblem as exc:
        problems.append(Problem(shown, exc.line, format_path(exc.path), exc.message))
        return None
    file = _File(shown, doc, problems)
    if not isinstance(doc.data, dict):
        file.problem((), "the top level of a compose file must be a mapping (`services:`, `secrets:`, ...)")
        return None
    return file, doc.data, raw


def _mapping(file: _File, data: dict[str, object], key: str) -> dict[str, object]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        file.problem((key,), f"`{key}` must be a mapping")
        return {}
    return value


def _merge_file(file: _File, data: dict[str, object], merged: _Merged) -> None:
    for name, raw in _mapping(file, data, "services").items():
        path: PathKey = ("services", name)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            file.problem(path, f"service {name} must be a mapping")
            continue
        service = merged.services.setdefault(name, _Service(name=name, origin=file.origin(path)))
        _merge_service(file, path, raw, service)
    for key, raw in _mapping(file, data, "secrets").items():
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            file.problem(("secrets", key), f"secret {key} must be a mapping (`file:`, `external:`, `name:`)")
            continue
        merged.secrets[key] = (raw, file.origin(("secrets", key)))
    for key, raw in _mapping(file, data, "configs").items():
        if isinstance(raw, dict):
            merged.configs[key] = (raw, file.origin(("configs", key)))
    for key, raw in _mapping(file, data, "volumes").items():
        merged.volumes[key] = raw if isinstance(raw, dict) else {}


def _merge_service(file: _File, path: PathKey, raw: dict[str, object], service: _Service) -> None:
    secrets = raw.get("secrets")
    if secrets is not None and not isinstance(secrets, list):
        file.problem((*path, "secrets"), "`secrets` must be a list of secret names or mappings")
        secrets = []
    for index, item in enumerate(secrets or ()):
        at: PathKey = (*path, "secrets", index)
        source = item if isinstance(item, str) else item.get("source") if isinstance(item, dict) else None
        if not isinstance(source, str) or not source:
            file.problem(at, "a secret entry is a compose secret's name, or a mapping with `source`")
            continue
        service.secrets[source] = (item, file.origin(at))
    volumes = raw.get("volumes")
    for index, item in enumerate(volumes if isinstance(volumes, list) else ()):
        service.volumes.append((item, file.origin((*path, "volumes", index))))
    environment = raw.get("environment")
    if isinstance(environment, dict):
        service.env_names.update(str(k) for k in environment)
    elif isinstance(environment, list):
        service.env_names.update(str(e).partition("=")[0] for e in environment)
    env_file = raw.get("env_file")
    env_files: list[object] = (
        [env_file]
        if isinstance(env_file, str)
        else list(env_file or ())
        if isinstance(env_file, list)
        else []
    )
    for index, item in enumerate(env_files):
        if isinstance(item, str):
            at = (*path, "env_file") if isinstance(env_file, str) else (*path, "env_file", index)
            service.env_files.append((item, file.origin(at)))


# --- the merged view ---------------------------------------------------------------------------------


def _text(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    return value if isinstance(value, str) else None


def _use(
    service: str, source: str, item: object, origin: Origin, problems: list[Problem]
) -> SecretUse | None:
    if isinstance(item, str):
        return SecretUse(service=service, key=source, target=source, origin=origin)
    assert isinstance(item, dict)

    def bad(name: str, message: str) -> None:
        line = origin.line
        problems.append(Problem(origin.file, line, f"{origin.path}.{name}", message))

    target = item.get("target")
    uid, gid = _text(item.get("uid", DEFAULT_UID)), _text(item.get("gid", DEFAULT_GID))
    mode = item.get("mode", DEFAULT_MODE)
    ok = True
    if target is not None and (not isinstance(target, str) or not target):
        bad("target", "`target` must be a file path")
        ok = False
    if uid is None or gid is None:
        bad("uid" if uid is None else "gid", '`uid` and `gid` are numeric ids, like "1000"')
        ok = False
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
        bad("mode", "`mode` is a number, written in octal like 0440")
        ok = False
    if not ok:
        return None
    assert uid is not None and gid is not None and isinstance(mode, int)
    return SecretUse(
        service=service,
        key=source,
        target=str(target or source),
        uid=uid,
        gid=gid,
        mode=mode,
        origin=origin,
    )


def _is_file_path(source: str) -> bool:
    # docker/cli loader.go isFilePath: what a short volume syntax treats as a bind mount
    return source.startswith((".", "/", "~")) or bool(re.match(r"^[A-Za-z]:[\\/]", source))


def _binds(service: _Service, volumes: Mapping[str, dict[str, object]], workdir: str) -> list[str]:
    found: list[str] = []
    for item, _ in service.volumes:
        source: object = None
        kind = "volume"
        if isinstance(item, str):
            parts = item.split(":")
            if len(parts) > 1:
                source = parts[0]
                kind = "bind" if _is_file_path(parts[0]) else "volume"
        elif isinstance(item, dict):
            source, kind = item.get("source"), str(item.get("type", "volume"))
        if not isinstance(source, str) or not source:
            continue
        if kind == "bind":
            found.append(
                source if source.startswith(("/", "~")) else os.path.normpath(os.path.join(workdir, source))
            )
        elif kind == "volume":
            options = volumes.get(source, {}).get("driver_opts")
            if isinstance(options, dict) and "bind" in str(options.get("o", "")).split(","):
                device = options.get("device")
                if isinstance(device, str) and device:
                    found.append(device)
        elif kind == "npipe":
            found.append(source)
    return found


def _env_file_names(path: str) -> set[str]:
    """The variable names an env_file sets (never its values); nothing when it cannot be read."""
    names: set[str] = set()
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            for line in stream.read(MAX_COMPOSE_BYTES).splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    names.add(line.partition("=")[0].strip())
    except OSError:
        pass
    return names


def read_compose(
    files: Sequence[Path],
    environment: Mapping[str, str],
    problems: list[Problem],
    *,
    where: Callable[[str], str] | None = None,
) -> tuple[Compose, tuple[tuple[str, bytes], ...]] | None:
    """The merged :class:`Compose` of ``files`` interpolated with ``environment``, and each file's
    bytes (for the content digest); None when a file could not be read at all. Problems found are
    appended to ``problems``; ``where`` prefixes each (e.g. the Stack manifest that names the files)."""
    start = len(problems)
    merged = _Merged()
    raws: list[tuple[str, bytes]] = []
    shown: list[str] = []
    for index, path in enumerate(files):
        read = _read(path, problems)
        if read is None:
            continue
        file, data, raw = read
        raws.append((file.shown, raw))
        shown.append(file.shown)
        data = _interpolate_all(data, (), environment, file)  # type: ignore[assignment]
        assert isinstance(data, dict)
        if index == 0 and "version" in data:
            merged.version = (
                _text(data["version"]) if not isinstance(data["version"], float) else str(data["version"])
            )
        _merge_file(file, data, merged)
    if len(raws) != len(files):
        _prefix(problems, start, where)
        return None
    workdir = os.path.dirname(os.path.abspath(files[0])) if files else "."
    compose = _build(merged, tuple(shown), workdir, problems)
    _prefix(problems, start, where)
    return compose, tuple(raws)


def _prefix(problems: list[Problem], start: int, where: Callable[[str], str] | None) -> None:
    if where is None:
        return
    for index in range(start, len(problems)):
        p = problems[index]
        problems[index] = Problem(p.file, p.line, p.path, where(p.message))


def _build(merged: _Merged, shown: tuple[str, ...], workdir: str, problems: list[Problem]) -> Compose:
    uses: list[SecretUse] = []
    services: list[ComposeService] = []
    host_files: list[HostFile] = []
    for name in sorted(merged.services):
        service = merged.services[name]
        for source in sorted(service.secrets):
            item, origin = service.secrets[source]
            if source not in merged.secrets:
                problems.append(
                    Problem(
                        origin.file,
                        origin.line,
                        origin.path,
                        f"service {name} mounts secret '{source}', which no compose file defines under the "
                        "top-level `secrets:`",
                    )
                )
                continue
            use = _use(name, source, item, origin, problems)
            if use is not None:
                uses.append(use)
        env_names = set(service.env_names)
        for env_file, origin in service.env_files:
            path = os.path.normpath(os.path.join(workdir, env_file))
            host_files.append(HostFile(path=path, what=f"env_file of service {name}", origin=origin))
            env_names |= _env_file_names(path)
        services.append(
            ComposeService(
                name=name,
                binds=tuple(_binds(service, merged.volumes, workdir)),
                env_names=frozenset(env_names),
                origin=service.origin,
            )
        )
    secrets: list[ComposeSecret] = []
    for key in sorted(merged.secrets):
        raw, origin = merged.secrets[key]
        external: object = raw.get("external")
        named: object = raw.get("name")
        if isinstance(external, dict):
            named = named or external.get("name")
            external = True
        file = raw.get("file")
        secrets.append(
            ComposeSecret(
                key=key,
                external=bool(external),
                name=named if isinstance(named, str) else None,
                file=file if isinstance(file, str) else None,
                origin=origin,
            )
        )
        if isinstance(file, str) and not external:
            host_files.append(HostFile(path=_abs(workdir, file), what=f"file of secret {key}", origin=origin))
    for key in sorted(merged.configs):
        raw, origin = merged.configs[key]
        file = raw.get("file")
        if isinstance(file, str) and not raw.get("external"):
            host_files.append(HostFile(path=_abs(workdir, file), what=f"file of config {key}", origin=origin))
    return Compose(
        files=shown,
        version=merged.version,
        services=tuple(services),
        uses=tuple(uses),
        secrets=tuple(secrets),
        host_files=tuple(host_files),
    )


def _abs(workdir: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(workdir, path))


_STACK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,39}$")


def stack_from_files(
    name: str,
    files: Sequence[Path],
    environment: Mapping[str, str],
    *,
    docker_args: Sequence[str] = (),
    always: bool = True,
) -> StackSpec:
    """The stack of ``stack deploy`` / ``stack override``: ``-c`` files named by the operator,
    interpolated with ``environment``. :class:`ManifestError` with every problem of the files."""
    if not _STACK_NAME.match(name):
        raise ConfigError(
            f"{name!r} is not a stack name: letters, digits, '_', '.', '-', at most 40 characters"
        )
    if not files:
        raise ConfigError("give the stack's compose files with -c FILE (as for docker stack deploy)")
    problems: list[Problem] = []
    read = read_compose(files, environment, problems)
    if read is None or problems:
        raise ManifestError(problems)
    compose, raws = read
    stack = StackSpec(
        name=name,
        compose=compose,
        files=tuple(Path(os.path.abspath(f)) for f in files),
        content="",
        environment=dict(environment),
        docker_args=tuple(docker_args),
        always=always,
    )
    return replace(stack, content=stack.digest(raws))
