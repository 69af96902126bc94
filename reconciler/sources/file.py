"""The ``file`` source: a plain file's bytes are the value.

Meant for values that need no encryption in git (a user name, a public certificate) or files that a
deployment puts next to the manifests. The size is checked before reading, so pointing at a huge file
by mistake costs nothing. Messages name the path, never the content.

The file must resolve, symlinks followed, inside its source root (``source.root``, set by the
loader; see ``manifests/roots.py``). The loader checked that already; it is checked again right
before reading (:func:`contained`), and the resolved path is what is read, so a symlink swapped in
between cannot point the read elsewhere. Only regular files are read (no FIFO, device or socket).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from reconciler.core.model import MAX_SECRET_BYTES, FileSource
from reconciler.display import display_path
from reconciler.sources.base import SourceFailure, check_size


def contained(file: Path, root: Path | None, field: str) -> Path:
    """``file`` resolved (symlinks followed) when it lies inside ``root``; ``root`` None: as given."""
    if root is None:
        return file
    real = os.path.realpath(file)
    top = str(root)
    if real != top and not real.startswith(top.rstrip(os.sep) + os.sep):
        raise SourceFailure(
            field,
            f"{display_path(file)} resolves outside the source root {root}: a source must be a file of "
            "the repository that holds the manifests",
        )
    return Path(real)


def read_file(source: FileSource) -> bytes:
    """The bytes of ``source.file``; raises :class:`SourceFailure` (outside the root, missing,
    unreadable, not a regular file, empty, too big)."""
    shown = display_path(source.file)
    real = contained(source.file, source.root, "file")
    try:
        info = real.stat()
        if stat.S_ISDIR(info.st_mode):
            raise SourceFailure("file", f"{shown} is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise SourceFailure("file", f"{shown} is not a regular file (a device, pipe or socket)")
        check_size(info.st_size, f"file {shown}", "file")
        # O_NOFOLLOW: `real` has no symlink left in it; if one appears now, refuse rather than follow.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)  # enough to tell "too big", never more
    except FileNotFoundError:
        raise SourceFailure(
            "file",
            (f"file {shown} does not exist: create it or fix the path (relative to the manifest's folder)"),
        ) from None
    except OSError as exc:
        raise SourceFailure("file", f"cannot read {shown}: {exc.strerror or type(exc).__name__}") from None
    # The file may have changed between stat and read; check what was actually read.
    check_size(len(data), f"file {shown}", "file")
    return data
