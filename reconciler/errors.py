"""The exception tree and the exit codes, documented once.

Every error the user can act on derives from :class:`SwarmSecretsError` and renders as one line via
``str()``. Classes are grouped by what the user must do::

    SwarmSecretsError
    ├── ProblemsError        carries every problem found, each a Problem (file:line: path: message)
    │   ├── ManifestError    fix the manifest (schema, names, cross-file rules)    → exit 1
    │   └── SourceError      fix the key, the file or the variable a value comes from → exit 1
    ├── SwarmError           the engine said no or is not usable
    │   ├── SwarmUnavailable     cannot reach the engine (transient)
    │   │   ├── SwarmNoLeader    the manager answers but the swarm has no leader right now (an election,
    │   │   │                    or too few managers online); retried for longer (transient)
    │   │   └── NotManager       the engine answers but is not a swarm manager (permanent)
    │   ├── SwarmConflict        someone else changed the object between observe and mutate (re-observe)
    │   └── SwarmRefused         the engine refused a request permanently (400/404/409 that re-observing
    │                            does not fix)
    ├── GitError             fetching the manifests from git failed (transient or not)
    └── ConfigError          a command-line option or setting is wrong

Transient vs permanent is a separate axis: ``transient`` is True where retrying later may succeed;
``swarm.py`` retries only those, bounded, with tenacity.

No message ever contains a secret value: errors are built from names, paths and engine messages,
never from source content.

This module must not import anything from the rest of the package.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    """Process exit codes, the same for every command (Terraform's -detailed-exitcode convention)."""

    OK = 0
    """Success; for ``plan`` without ``--detailed-exitcode``, also "changes pending"."""
    ERROR = 1
    """A user error or an engine error before any change was made: nothing was changed."""
    CHANGES = 2
    """``plan --detailed-exitcode`` only: the plan is not empty."""
    PARTIAL = 3
    """``apply`` made changes but some failed (rollout rolled back, paused or timed out, a version
    blocked). The swarm is consistent; the next ``apply`` converges from it."""
    INTERRUPTED = 130
    """Stopped by the user (Ctrl-C) at a safe point."""


class SwarmSecretsError(Exception):
    """Base of every error the user can act on. ``str()`` is one line, no traceback wanted."""

    transient: bool = False


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a manifest, located precisely enough to fix without searching."""

    file: str
    line: int | None
    path: str
    """Dotted manifest path, e.g. ``spec.secrets.db_password.services[1].mode``; empty for the file."""
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ProblemsError(SwarmSecretsError):
    """Base for errors that carry every problem found, not only the first; ``str()`` is one line per
    problem."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ManifestError(ProblemsError):
    """One or more manifests are invalid (YAML, schema, names, cross-file rules)."""


class SourceError(ProblemsError):
    """One or more secret values could not be resolved (missing file or variable, sops failure, bad
    key path, empty or oversized value). Each problem names manifest file, manifest path and what to
    do."""


class ConfigError(SwarmSecretsError):
    """A command-line option, environment setting or key file is wrong."""


class SwarmError(SwarmSecretsError):
    """The Docker engine refused or could not serve a request."""


class SwarmUnavailable(SwarmError):
    """The engine cannot be reached, or is not a swarm manager. Often transient."""

    transient = True


class SwarmConflict(SwarmError):
    """An object changed between observing and mutating it (409 on create, ``update out of
    sequence``). The remedy is always: observe again and re-plan."""

    transient = True


class SwarmRefused(SwarmError):
    """The engine refused a request and repeating it will not help."""


class SwarmNoLeader(SwarmUnavailable):
    """The manager answers, but the swarm cannot serve the request now: its managers are electing a
    leader (after the leader was lost) or more than half of them are offline. Reads are retried for
    longer than other transient errors (an election takes seconds); a mutation that failed this way may
    still have been committed, so the caller observes again instead of repeating it."""

    transient = True


class NotManager(SwarmUnavailable):
    """The engine answers but is not a swarm manager: retrying will not help."""

    transient = False


class GitError(SwarmSecretsError):
    """Fetching or checking out the manifests failed. ``str()`` is one line without credentials.

    ``transient`` is True for network trouble and timeouts, False when the ref or path does not exist
    or the server refused the credentials: retrying will not help until someone fixes that.
    """

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient
