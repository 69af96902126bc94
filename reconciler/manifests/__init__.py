"""Files to validated sets: find the YAML, read it with line marks, check the schema and cross-file
rules, build frozen :class:`~reconciler.core.model.SecretSet` values. Never reads a secret value."""

from reconciler.manifests.loader import DEFAULT_PATH, load

__all__ = ["DEFAULT_PATH", "load"]
