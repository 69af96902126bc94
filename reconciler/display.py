"""How paths and counts appear in messages.

Paths: relative to the working folder when under it, else absolute; shared by the manifest loader and
the sources, so every message names a file the same way. Counts: ``1 service``, ``2 services``, never
``service(s)``. No other I/O than reading the working folder.
"""

from __future__ import annotations

import os
from pathlib import Path


def display_path(path: Path) -> str:
    """``path`` as shown in messages: relative to the working folder when under it, else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return absolute.as_posix()


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 service``, ``2 services``, ``0 services``; ``plural`` for nouns that do not just add an s."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
