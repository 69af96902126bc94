"""A digest of the manifest files, so a saved plan can tell that they changed since it was made.

Only the files that hold a loaded SecretSet count (other YAML next to them, such as sops-encrypted
files, is covered by the values' keyed fingerprints, not hashed here). Each file counts with its path
as messages show it (relative to the working folder when under it) and its bytes: the same checkout
planned and applied from the same folder gives the same digest. Manifests hold no values, so the
digest confirms nothing about one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from reconciler.core.model import SecretSet
from reconciler.display import display_path
from reconciler.errors import Problem
from reconciler.manifests.loader import find_files


def manifest_digest(paths: Sequence[Path], sets: Sequence[SecretSet]) -> str:
    """``sha256:<hex>`` over the files under ``paths`` that hold one of ``sets``."""
    problems: list[Problem] = []
    holding = {s.origin.file for s in sets}
    digest = hashlib.sha256()
    for file in sorted((file for file, _root in find_files(paths, problems)), key=display_path):
        shown = display_path(file)
        if shown not in holding:
            continue
        data = file.read_bytes()
        digest.update(f"{shown}\0{len(data)}\0".encode())
        digest.update(data)
    return f"sha256:{digest.hexdigest()}"
