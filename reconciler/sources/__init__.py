"""Turn the sources a manifest declares into secret values, reporting every failure at once.

``resolve(sets)`` reads each secret's value from its source (``sops.py``, ``file.py``, ``env.py``),
checks it is neither empty nor too big for Swarm, and wraps it in :class:`~reconciler.core.model.SecretValue`
at once. Failures are collected into one :class:`~reconciler.errors.SourceError`, each located at the
secret's manifest line and the path of the faulty source field (``spec.secrets.pw.source.sops.key``).

Values never go into a log line, an exception, argv or a file. Callers should keep the returned dict
only as long as they need it (fingerprinting, then the Engine request).

A generated secret (``generator.py``) has no value here: it is made only when its version is created
(``converge`` hands :func:`generate` to the executor), so ``resolve`` leaves it out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from reconciler.core.model import (
    EnvSource,
    FileSource,
    GenerateSource,
    SecretSet,
    SecretSpec,
    SecretValue,
    SopsSource,
)
from reconciler.display import display_path
from reconciler.errors import Problem, SourceError
from reconciler.paths import RealPaths
from reconciler.sources.base import SourceFailure, check_size
from reconciler.sources.env import read_env
from reconciler.sources.file import read_file
from reconciler.sources.generator import generate
from reconciler.sources.sops import SopsDecryptor, key_text

__all__ = ["generate", "resolve", "resolve_isolated"]


def resolve(
    sets: Sequence[SecretSet], environ: Mapping[str, str] | None = None, *, sops_env: Sequence[str] = ()
) -> dict[tuple[str, str], SecretValue]:
    """The value of every secret but the generated ones, keyed by ``(set name, secret name)``.

    ``environ`` is the environment for ``env`` sources, for finding sops (``SWARM_SECRETS_SOPS``) and
    the source of the sops process's reduced environment (its key variables; ``sops_env`` globs add
    cloud KMS or Vault credentials); default: this process's environment. Each encrypted file is
    decrypted once however many secrets use it. Raises ``SourceError`` listing every secret that could
    not be resolved.

    Call it only with sets the loader has held to the boundary (``core/guard.py``): it reads what
    they name.
    """
    values, failing = resolve_isolated(sets, environ, sops_env=sops_env)
    if failing:
        raise SourceError([problem for error in failing.values() for problem in error.problems])
    return values


def resolve_isolated(
    sets: Sequence[SecretSet], environ: Mapping[str, str] | None = None, *, sops_env: Sequence[str] = ()
) -> tuple[dict[tuple[str, str], SecretValue], dict[str, SourceError]]:
    """:func:`resolve`, but a set whose sources fail does not stop the others (the long-running loop):
    the values of the sets that resolved completely, and a ``SourceError`` per set that did not (none
    of its values is kept)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    decryptor = SopsDecryptor(env, sops_env)
    realpath = RealPaths()
    values: dict[tuple[str, str], SecretValue] = {}
    failing: dict[str, SourceError] = {}
    for secret_set in sets:
        problems: list[Problem] = []
        resolved: dict[tuple[str, str], SecretValue] = {}
        for spec in secret_set.secrets:
            if isinstance(spec.source, GenerateSource):
                continue  # made when its version is created, never before
            try:
                value = _fetch(spec, env, decryptor, realpath)
                resolved[(secret_set.name, spec.secret)] = SecretValue(value)
            except SourceFailure as failure:
                origin = spec.origin
                problems.append(
                    Problem(
                        origin.file, origin.line, f"{origin.path}.source.{failure.field}", failure.message
                    )
                )
        if problems:
            failing[secret_set.name] = SourceError(problems)
        else:
            values.update(resolved)
    return values, failing


def _fetch(
    spec: SecretSpec, environ: Mapping[str, str], decryptor: SopsDecryptor, realpath: RealPaths
) -> bytes:
    source = spec.source
    if isinstance(source, SopsSource):
        data = decryptor.value(source)
        if source.key is None:
            check_size(len(data), lambda: f"decrypted file {display_path(source.file)}", "sops.file")
        else:
            key = source.key
            check_size(len(data), lambda: f"key {key_text(key)} of {display_path(source.file)}", "sops.key")
        return data
    if isinstance(source, FileSource):
        return read_file(source, realpath)
    if isinstance(source, EnvSource):
        return read_env(source, environ)
    raise TypeError(f"unknown source type {type(source).__name__}")  # a bug: model.Source grew a kind
