"""How paths appear in messages: relative to the working folder when under it, else absolute.

Shared by the manifest loader and the sources, so every message names a file the same way. No other
I/O than reading the working folder.
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
