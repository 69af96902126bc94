"""The ``env`` source: an environment variable of the reconciler process is the value (UTF-8).

Useful when a CI system or an orchestrator injects the secret. An unset variable and an empty one are
different mistakes and get different messages. The variable's value never appears in a message.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.core.model import EnvSource
from reconciler.sources.base import SourceFailure, check_size


def read_env(source: EnvSource, environ: Mapping[str, str]) -> bytes:
    """The variable's value as UTF-8 bytes; raises :class:`SourceFailure` if unset, empty or too big."""
    value = environ.get(source.var)
    if value is None:
        raise SourceFailure(
            "env",
            (
                f"environment variable {source.var} is not set: set {source.var} in the reconciler's "
                "environment"
            ),
        )
    # surrogateescape gives back the original bytes of a variable that was not valid UTF-8 (os.environ
    # decodes them that way) instead of failing on them.
    data = value.encode("utf-8", "surrogateescape")
    check_size(len(data), lambda: f"environment variable {source.var}", "env")
    return data
