"""What every source shares: the failure type and the checks every value must pass.

A fetcher (``sops.py``, ``file.py``, ``env.py``) returns bytes or raises :class:`SourceFailure` with
the manifest path below ``source`` that is at fault and a message that names files, variables and
keys, never a value. ``resolve()`` in ``__init__`` turns failures into located problems.

No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable

from reconciler.core.model import MAX_SECRET_BYTES


class SourceFailure(Exception):
    """One value could not be produced. Never carries the value or any part of it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        """Manifest path below ``source``, e.g. ``sops.key`` or ``env``."""
        self.message = message


def check_size(size: int, what: Callable[[], str], field: str) -> None:
    """Refuse values Swarm would refuse: empty, or 500 KiB and more. Says the size, never the content.
    ``what`` names the value in the message; called only for one, since naming a file is not free."""
    if size == 0:
        raise SourceFailure(
            field, f"{what()} is empty; Swarm does not accept an empty secret: give it a value"
        )
    if size > MAX_SECRET_BYTES:
        raise SourceFailure(
            field,
            (
                f"{what()} is {size} bytes; Swarm accepts at most {MAX_SECRET_BYTES} bytes (under 500 KiB): "
                "store a smaller value"
            ),
        )
