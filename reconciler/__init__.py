"""swarm-secrets: a declarative GitOps reconciler for Docker Swarm secrets.

``__version__`` is the installed distribution's version, which hatch-vcs derives from the git tags at
build time (``0.1.0`` on the tag ``v0.1.0``, ``0.1.1.dev3+g<sha>`` three commits later); running from
a source tree that was never installed gives ``0+unknown``. It is shown by ``--version``, stamped into
the image labels and into every audit event.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("swarm-secrets")
except PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
