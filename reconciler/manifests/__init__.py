"""Files to validated sets: find the YAML, read it with line marks, check the schema and cross-file
rules, keep sources inside their source root (``roots.py``), hold the sets to the operator's boundary
(``core/guard.py``), build frozen :class:`~reconciler.core.model.SecretSet` values; and read the
operator's policy file (``policy.py``). Never reads a secret value."""

from reconciler.manifests.loader import DEFAULT_PATH, Manifests, load, load_manifests, stack_problems

__all__ = ["DEFAULT_PATH", "Manifests", "load", "load_manifests", "stack_problems"]
