"""The ``file`` source: a plain file's bytes are the value.

Meant for values that need no encryption in git (a user name, a public certificate) or files that a
deployment puts next to the manifests. The size is checked before reading, so pointing at a huge file
by mistake costs nothing. Messages name the path, never the content.
"""

from __future__ import annotations

import os
import stat

from reconciler.core.model import MAX_SECRET_BYTES, FileSource
from reconciler.display import display_path
from reconciler.sources.base import SourceFailure, check_size


def read_file(source: FileSource) -> bytes:
    """The bytes of ``source.file``; raises :class:`SourceFailure` (missing, unreadable, empty, too big)."""
    # The path is worked out for display only when there is something to say (thousands of sources).
    try:
        info = os.stat(source.file)
        if stat.S_ISDIR(info.st_mode):
            raise SourceFailure("file", f"{display_path(source.file)} is a folder, not a file")
        if not 0 < info.st_size <= MAX_SECRET_BYTES:
            check_size(info.st_size, f"file {display_path(source.file)}", "file")
        with open(source.file, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        raise SourceFailure(
            "file",
            (
                f"file {display_path(source.file)} does not exist: create it or fix the path (relative "
                "to the manifest's folder)"
            ),
        ) from None
    except OSError as exc:
        raise SourceFailure(
            "file", f"cannot read {display_path(source.file)}: {exc.strerror or type(exc).__name__}"
        ) from None
    # The file may have changed between stat and read; check what was actually read.
    if not 0 < len(data) <= MAX_SECRET_BYTES:
        check_size(len(data), f"file {display_path(source.file)}", "file")
    return data
