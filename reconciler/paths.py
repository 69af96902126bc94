"""Resolving paths, symlinks followed, and the source-root containment rule: file-system metadata only.

A load checks every source path of every manifest against its source root, and reading a value checks
it again. ``os.path.realpath`` looks at every component of a path (an ``lstat`` each), so 1,000 sources
in one folder cost 1,000 resolutions of that same folder. :class:`RealPaths` resolves each folder
once and then only looks at the last component. One is made per load or per resolution of the values,
never kept longer: a checkout that changes between two runs is seen afresh.
"""

from __future__ import annotations

import os
import stat


def inside(real: str, root: str) -> str | None:
    """``real`` (a resolved path) when it is ``root`` or below it, else None. String work only: this
    runs for every source of every manifest, and again before each is read."""
    if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
        return real
    return None


class RealPaths:
    """``os.path.realpath`` with each folder resolved once (see the module docstring)."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, path: str | os.PathLike[str]) -> str:
        text = os.fspath(path)
        # Only an absolute, already normal path splits into a folder and a name the same way realpath
        # walks it (`link/..` is resolved by realpath through the link, by normpath without it).
        if not os.path.isabs(text) or os.path.normpath(text) != text:
            return os.path.realpath(text)
        folder, name = os.path.split(text)
        if not name:
            return os.path.realpath(text)
        try:
            if stat.S_ISLNK(os.lstat(text).st_mode):
                return os.path.realpath(text)
        except OSError:
            pass  # missing (or unreadable): realpath keeps such a last component as written too
        real_folder = self._folders.get(folder)
        if real_folder is None:
            real_folder = self._folders[folder] = os.path.realpath(folder)
        return os.path.join(real_folder, name)
