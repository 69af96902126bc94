"""swarm-secrets: a declarative GitOps reconciler for Docker Swarm secrets.

``__version__`` is the installed distribution's version, which hatch-vcs derives from the git tags at
build time (``0.1.0`` on the tag ``v0.1.0``, ``0.1.1.dev3+g<sha>`` three commits later); running from
a source tree that was never installed gives ``0+unknown``. It is shown by ``--version``, stamped into
the image labels and into every audit event.
"""

from typing import Any

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    # Looked up on first use, not at import: importlib.metadata costs ~40 ms, and most runs (a plan, a
    # validate) never show the version.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("swarm-secrets")
    except PackageNotFoundError:  # a source tree on sys.path, never installed
        found = "0+unknown"
    globals()["__version__"] = found
    return found
