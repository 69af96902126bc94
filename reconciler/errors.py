"""The exception tree and the exit codes, documented once.

Every error the user can act on derives from :class:`SwarmSecretsError` and renders as one line via
``str()``. Classes are grouped by what the user must do::

    SwarmSecretsError
    ├── ProblemsError        carries every problem found, each a Problem (file:line: path: message)
    │   ├── ManifestError    fix the manifest (schema, names, cross-file rules)    → exit 1
    │   ├── PolicyViolation  the manifest asks for more than the operator allows     → exit 1
    │   ├── PolicyFileError  fix the operator's policy file (--policy)               → exit 1
    │   ├── SourceError      fix the key, the file or the variable a value comes from → exit 1
    │   └── CheckFailed      a pre-mutation check (``converge``) refused the run        → exit 1
    ├── SwarmError           the engine said no or is not usable
    │   ├── SwarmUnavailable     cannot reach the engine (transient)
    │   │   ├── SwarmNoLeader    the manager answers but the swarm has no leader right now (an election,
    │   │   │                    or too few managers online); retried for longer (transient)
    │   │   └── NotManager       the engine answers but is not a swarm manager (permanent)
    │   ├── SwarmConflict        someone else changed the object between observe and mutate (re-observe)
    │   ├── SwarmRefused         the engine refused a request permanently (400/404/409 that re-observing
    │   │                        does not fix)
    │   └── LeaseBusy            another applier holds the swarm's lease (wait, or try again later)
    ├── PlanOutdated         a saved plan no longer matches what it was computed from → exit 1
    ├── GitError             fetching the manifests from git failed (transient or not)
    ├── RevisionError        the manifests are older than what the swarm runs (or it cannot be told)
    └── ConfigError          a command-line option or setting is wrong

Transient vs permanent is a separate axis: ``transient`` is True where retrying later, with the same
manifests, sources and settings, may succeed (the network, the engine busy or restarting, a lease held
by someone else). ``swarm.py`` retries transient reads, bounded, with tenacity; the long-running loop
backs off and retries transient failures, and *waits for a change* (a new revision, a webhook, a manual
reconcile) after a permanent one: a bad manifest, a source that cannot be resolved, a policy
violation (every :class:`ProblemsError`), a wrong setting, git refusing the credentials or the ref.

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
    """True where retrying later with the same inputs may succeed; False where something must change
    first (see the module docstring)."""


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
        text = f"{self.path}: {self.message}" if self.path else self.message
        # A problem of the swarm or the run (a pre-mutation check) has no file: just the message.
        return f"{where}: {text}" if where else text


class ProblemsError(SwarmSecretsError):
    """Base for errors that carry every problem found, not only the first; ``str()`` is one line per
    problem. Never transient: the same files give the same problems until someone changes them."""

    transient = False

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ManifestError(ProblemsError):
    """One or more manifests are invalid (YAML, schema, names, cross-file rules)."""


class PolicyViolation(ProblemsError):
    """A manifest asks for something the operator's policy, or a rule that always applies (no
    reserved variable, no grant to the reconciler or to a service holding the engine socket, no
    system target, no missing service), does not allow. Each problem names the manifest line, the
    rule and what would be allowed."""


class PolicyFileError(ProblemsError):
    """The policy file given with ``--policy`` is unreadable or invalid (one problem per fault)."""


class SourceError(ProblemsError):
    """One or more secret values could not be resolved (missing file or variable, sops failure, bad
    key path, empty or oversized value). Each problem names manifest file, manifest path and what to
    do."""


class CheckFailed(ProblemsError):
    """A pre-mutation check of ``converge`` (policy, revision, saved plan, …) found problems in the
    loaded and observed state: nothing was changed."""


class ConfigError(SwarmSecretsError):
    """A command-line option, environment setting or key file is wrong."""


class SwarmError(SwarmSecretsError):
    """The Docker engine refused or could not serve a request. Transient unless a subclass or the
    translation of the engine's answer says otherwise: an engine error (5xx) usually passes."""

    transient = True


class SwarmUnavailable(SwarmError):
    """The engine cannot be reached, or is not a swarm manager. Often transient."""

    transient = True


class SwarmConflict(SwarmError):
    """An object changed between observing and mutating it (409 on create, ``update out of
    sequence``). The remedy is always: observe again and re-plan."""

    transient = True


class SwarmRefused(SwarmError):
    """The engine refused a request and repeating it will not help."""

    transient = False


class LeaseBusy(SwarmError):
    """Another applier (``apply`` or a loop tick, here or on another machine) holds the swarm's lease
    and did not release it within ``--lock-timeout``. ``str()`` names the holder. Transient: the lease
    is released at the end of that run, or expires one TTL after its holder died."""

    transient = True


class LeaseLost(SwarmError):
    """The lease could not be renewed in time while held (engine unreachable, or someone removed or
    took over the lease object), so another applier may have run at the same time."""

    transient = True


class SwarmNoLeader(SwarmUnavailable):
    """The manager answers, but the swarm cannot serve the request now: its managers are electing a
    leader (after the leader was lost) or more than half of them are offline. Reads are retried for
    longer than other transient errors (an election takes seconds); a mutation that failed this way may
    still have been committed, so the caller observes again instead of repeating it."""

    transient = True


class NotManager(SwarmUnavailable):
    """The engine answers but is not a swarm manager: retrying will not help."""

    transient = False


class RevisionError(SwarmSecretsError):
    """Applying the manifests would move a set back to an older commit than the swarm records, or
    ancestry cannot be decided and the operator did not allow going on. Nothing was changed; a newer
    commit (or ``--allow-older-revision`` / ``--revision-check=warn``) resolves it."""


class PlanOutdated(SwarmSecretsError):
    """``apply --plan``: a value, a manifest, a service or a secret moved since the plan was saved, so
    the saved plan is not applied (nothing changed). ``str()`` says what moved, in one line."""


class GitError(SwarmSecretsError):
    """Fetching or checking out the manifests failed. ``str()`` is one line without credentials.

    ``transient`` is True for network trouble and timeouts, False when the ref or path does not exist
    or the server refused the credentials: retrying will not help until someone fixes that.
    """

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient
