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
from collections.abc import Callable
from pathlib import Path

from reconciler.core.model import MAX_SECRET_BYTES, FileSource
from reconciler.display import display_path
from reconciler.paths import inside
from reconciler.sources.base import SourceFailure, check_size


def contained(
    file: Path, root: Path | None, field: str, realpath: Callable[[Path], str] = os.path.realpath
) -> Path:
    """``file`` resolved (symlinks followed) when it lies inside ``root``; ``root`` None: as given.
    ``realpath``: the resolution's :class:`~reconciler.paths.RealPaths`."""
    if root is None:
        return file
    real = realpath(file)
    if inside(real, str(root)) is None:
        raise SourceFailure(
            field,
            f"{display_path(file)} resolves outside the source root {root}: a source must be a file of "
            "the repository that holds the manifests",
        )
    return Path(real)


def read_file(source: FileSource, realpath: Callable[[Path], str] = os.path.realpath) -> bytes:
    """The bytes of ``source.file``; raises :class:`SourceFailure` (outside the root, missing,
    unreadable, not a regular file, empty, too big)."""
    real = contained(source.file, source.root, "file", realpath)
    try:
        info = real.stat()
        if stat.S_ISDIR(info.st_mode):
            raise SourceFailure("file", f"{display_path(source.file)} is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise SourceFailure(
                "file", f"{display_path(source.file)} is not a regular file (a device, pipe or socket)"
            )
        check_size(info.st_size, lambda: f"file {display_path(source.file)}", "file")
        # O_NOFOLLOW: `real` has no symlink left in it; if one appears now, refuse rather than follow.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            data = _read_up_to(fd, info.st_size)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise SourceFailure(
            "file",
            f"file {display_path(source.file)} does not exist: create it or fix the path (relative to the "
            "manifest's folder)",
        ) from None
    except OSError as exc:
        shown = display_path(source.file)
        raise SourceFailure("file", f"cannot read {shown}: {exc.strerror or type(exc).__name__}") from None
    # The file may have grown between stat and read; check what was actually read.
    check_size(len(data), lambda: f"file {display_path(source.file)}", "file")
    return data


def _read_up_to(fd: int, expected: int) -> bytes:
    """The file's bytes up to its end, but at most ``MAX_SECRET_BYTES + 1`` (enough to tell "too big").

    The first read asks for what ``stat`` said plus one byte, later ones for 64 KiB: asking for the
    limit (a 500 KiB buffer for every 20-byte password) made reading 1,000 sources three times slower.
    Reading goes on until the end, since a read may return less than asked and the file may have
    grown since ``stat``."""
    chunks: list[bytes] = []
    total = 0
    want = expected + 1
    while total <= MAX_SECRET_BYTES:
        chunk = os.read(fd, min(want, MAX_SECRET_BYTES + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        want = 64 * 1024
    return b"".join(chunks)
