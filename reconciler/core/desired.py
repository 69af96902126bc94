"""Turn loaded manifests and their resolved values into the planner's desired state.

Values are replaced by keyed fingerprints here, so nothing downstream of this function (planner,
plan, renderers) ever holds a value. A generated secret (``source.generate``) has no value before
its version is created: it is described by its generator parameters instead, and never fingerprinted.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reconciler.core.fingerprint import Fingerprinter
from reconciler.core.model import (
    DesiredSecret,
    DesiredSet,
    DesiredState,
    GenerateSource,
    SecretSet,
    SecretSpec,
    SecretValue,
)
from reconciler.core.stacks import StackSpec

Values = Mapping[tuple[str, str], SecretValue]
"""Resolved values keyed by (set name, logical secret name)."""


def build_desired(
    sets: Sequence[SecretSet],
    values: Values,
    key: bytes,
    *,
    revision: str | None = None,
    stacks: Sequence[StackSpec] = (),
) -> DesiredState:
    fingerprint = Fingerprinter(key)
    return DesiredState(
        sets=tuple(
            DesiredSet(
                name=secret_set.name,
                keep=secret_set.keep,
                secrets=tuple(
                    _desired(secret_set.name, spec, values, fingerprint) for spec in secret_set.secrets
                ),
            )
            for secret_set in sets
        ),
        revision=revision,
        fingerprint_key_id=fingerprint.kid,
        stacks=tuple(stacks),
    )


def _desired(set_name: str, spec: SecretSpec, values: Values, fingerprint: Fingerprinter) -> DesiredSecret:
    source = spec.source
    generator = source.label if isinstance(source, GenerateSource) else None
    return DesiredSecret(
        set_name=set_name,
        secret=spec.secret,
        fingerprint="" if generator else fingerprint(values[(set_name, spec.secret)]),
        labels=dict(spec.labels),
        grants=spec.grants,
        generator=generator,
        rotate=spec.rotate,
    )
