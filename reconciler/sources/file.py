"""The ``file`` source: a plain file's bytes are the value.

Meant for values that need no encryption in git (a user name, a public certificate) or files that a
deployment puts next to the manifests. The size is checked before reading, so pointing at a huge file
by mistake costs nothing. Messages name the path, never the content.
"""

from __future__ import annotations

import stat

from reconciler.core.model import FileSource
from reconciler.display import display_path
from reconciler.sources.base import SourceFailure, check_size


def read_file(source: FileSource) -> bytes:
    """The bytes of ``source.file``; raises :class:`SourceFailure` (missing, unreadable, empty, too big)."""
    shown = display_path(source.file)
    try:
        info = source.file.stat()
        if stat.S_ISDIR(info.st_mode):
            raise SourceFailure("file", f"{shown} is a folder, not a file")
        check_size(info.st_size, f"file {shown}", "file")
        data = source.file.read_bytes()
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
