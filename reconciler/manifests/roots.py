"""Source roots: the folder every manifest and every ``file``/``sops.file`` source must stay inside.

A manifest author can commit ``source: {file: ../../etc/x}``, an absolute path, or a symlink that
points out of the repository; any of them would turn a file of the reconciler's host (its age key,
its git deploy key, its webhook secret) into a Swarm secret the author can mount. So every source
path, and every manifest found by searching a folder, must **resolve, symlinks followed, inside the
source root**:

* ``--source-root DIR`` when the operator gives one;
* else the git work tree that holds the manifests (the nearest folder above them with a ``.git``),
  which in ``run`` is the checkout;
* else the folder given on the command line (a file's own folder when a file is given).

So a repository that keeps ``manifests/`` and ``secrets/`` side by side works as it is.

Reads only file-system metadata (``realpath``, ``.git`` presence), never a file's content.
"""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.paths import inside


def source_root(given: Path, explicit: Path | None = None) -> Path:
    """The resolved source root for the manifest path ``given`` (see the module docstring)."""
    if explicit is not None:
        return Path(os.path.realpath(explicit))
    start = Path(os.path.realpath(given))
    if not start.is_dir():
        start = start.parent
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return start


def resolve_inside(path: Path, root: Path) -> Path | None:
    """``path`` resolved (symlinks followed, as far as it exists) when that lies inside ``root``
    (itself resolved), else None."""
    real = inside(os.path.realpath(path), str(root))
    return Path(real) if real is not None else None


def location(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form (``teams/shop/set.yaml``), or "" when outside."""
    real = resolve_inside(path, root)
    return real.relative_to(root).as_posix() if real is not None else ""
