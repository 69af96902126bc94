"""Which manifest revision is being applied, recorded on every new version (label) and in logs; and
whether applying it would move a set back to an older commit (:func:`check_revision`).

Order: an explicit ``--revision`` / ``SWARM_SECRETS_REVISION``; the commit CI systems announce
(``GITHUB_SHA``, ``CI_COMMIT_SHA``, ``DRONE_COMMIT_SHA``, ``BUILD_VCS_NUMBER``); else ``git rev-parse
HEAD`` in the first manifest path, with ``-dirty`` appended when the manifests there have uncommitted
changes. None when the manifests are not in git. Never fails a run: a revision is information.

:func:`check_revision` asks git (read-only: ``rev-parse``, ``merge-base --is-ancestor``) whether a
revision recorded on the swarm descends from the manifests' revision; what to do about it is the
operator's :class:`RevisionGuard`. This module must not touch the swarm and never echoes git's output.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reconciler.core.model import LABEL_REVISION, LiveState

CI_VARIABLES = ("GITHUB_SHA", "CI_COMMIT_SHA", "DRONE_COMMIT_SHA", "BUILD_VCS_NUMBER")


def detect_revision(paths: Sequence[Path], environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    explicit = env.get("SWARM_SECRETS_REVISION")
    if explicit:
        return explicit
    for variable in CI_VARIABLES:
        if env.get(variable):
            return env[variable]
    if not paths:
        return None
    path = paths[0] if paths[0].is_dir() else paths[0].parent
    try:
        head = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    revision = head.stdout.strip()
    return f"{revision}-dirty" if dirty.stdout.strip() else revision


# --- never the past over the present ------------------------------------------------------------------
#
# Each managed version records the commit it was created at (LABEL_REVISION). Before an apply, the
# manifests' commit is compared with the commits recorded on the swarm for the same sets: if one of
# those descends from the manifests' commit, the manifests are older than what the swarm already runs
# (a re-run of an old CI job, an older pipeline finishing last, a loop that fetched before a CI apply)
# and applying them would silently bring old values back. Deciding needs the history: `git merge-base
# --is-ancestor` in the manifests' repository. Only git's exit status is used; its output is never read
# into a message (it could quote the repository's content).

_DIRTY = "-dirty"
_CHECK_TIMEOUT = 30.0

RevisionCheckMode = Literal["error", "warn"]
"""What happens when ancestry cannot be decided: refuse (the default) or warn and go on."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RevisionGuard:
    """The operator's choices for the revision check (``--allow-older-revision``, ``--revision-check``)
    and where the manifests' repository is."""

    repository: Path | None
    """A path inside the manifests' git repository (a manifest folder or file); None: not in git."""
    allow_older: bool = False
    """Apply even when the swarm records a newer commit of the same set (moves the set back)."""
    undecidable: RevisionCheckMode = "error"
    """When ancestry cannot be decided (shallow clone, unrelated history, commit unknown locally)."""

    def refuses(self, problem: RevisionProblem) -> bool:
        """True when ``problem`` must stop the run; False when it is only worth a warning."""
        if self.allow_older:
            return False
        return problem.kind == "older" or self.undecidable == "error"


@dataclass(frozen=True, slots=True, kw_only=True)
class RevisionProblem:
    """Why the manifests' revision may be older than what the swarm runs; ``message`` is one line."""

    kind: Literal["older", "undecidable"]
    """``older``: the swarm's revision descends from the manifests'; ``undecidable``: cannot tell."""
    manifests: str
    """The manifests' revision (as given: a sha, maybe with ``-dirty``)."""
    recorded: str
    """The swarm's revision it was compared with."""
    sets: tuple[str, ...]
    """Sets whose versions carry ``recorded``."""
    detail: str
    """What is wrong, naming both commits."""
    advice: str
    """What the operator can do about it."""

    @property
    def message(self) -> str:
        """The one-line refusal."""
        return f"refusing to apply: {self.detail}; {self.advice}"


def recorded_revisions(live: LiveState, sets: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Revision → the sets (among ``sets``) whose managed versions record it, from the observed state.

    Only the sets being applied count: other sets on the swarm may come from other repositories, whose
    commits this repository cannot know.
    """
    wanted = frozenset(sets)
    found: dict[str, set[str]] = {}
    for secret in live.secrets:
        revision = secret.labels.get(LABEL_REVISION, "").strip()
        if secret.managed and secret.set_name in wanted and revision:
            found.setdefault(revision, set()).add(secret.set_name or "")
    return {rev: tuple(sorted(names)) for rev, names in sorted(found.items())}


def check_revision(
    manifests: str | None, recorded: Mapping[str, Sequence[str]], repository: Path | None
) -> RevisionProblem | None:
    """None when applying ``manifests`` moves no set back; else the problem (``older`` first).

    ``recorded`` maps each revision found on the swarm to the sets that carry it
    (:func:`recorded_revisions`); ``repository`` is a path inside the manifests' git repository. An
    unknown manifests revision checks nothing, and neither do manifests outside any git repository
    (a revision given by ``--revision`` there is a label, not a commit): there is no history to ask.
    Without a working ``git`` binary nothing can be decided.
    """
    if not manifests:
        return None
    wanted = manifests.removesuffix(_DIRTY)
    others = {rev: tuple(sets) for rev, sets in recorded.items() if rev.removesuffix(_DIRTY) != wanted}
    if not others:
        return None
    git = _Git(repository)
    in_git = git.is_repository()
    if in_git is False:
        return None
    head = git.commit(wanted) if in_git else None
    undecided: RevisionProblem | None = None
    for rev, sets in others.items():
        where = f"set{'s' if len(sets) > 1 else ''} {', '.join(repr(s) for s in sets)}"
        if head is None:
            reason = git.why_unknown(wanted, "the manifests' revision")
            undecided = undecided or _undecidable(manifests, rev, sets, where, reason)
            continue
        other = git.commit(rev.removesuffix(_DIRTY))
        if other is None:
            reason = git.why_unknown(rev, "that commit")
            undecided = undecided or _undecidable(manifests, rev, sets, where, reason)
            continue
        if other == head or git.is_ancestor(other, head):
            continue  # the swarm runs this commit or an older one: moving forward
        if git.is_ancestor(head, other):
            return RevisionProblem(
                kind="older",
                manifests=manifests,
                recorded=rev,
                sets=sets,
                detail=(
                    f"revision {manifests} is older than {rev}, which the swarm's {where} was applied at "
                    f"({rev} descends from {manifests})"
                ),
                advice=(
                    f"apply {rev} or a newer commit, or pass --allow-older-revision to move the set back "
                    "on purpose"
                ),
            )
        reason = (
            "the repository is a shallow clone, so the history between them is missing (fetch the full "
            "history, e.g. `git fetch --unshallow`)"
            if git.shallow()
            else "neither commit descends from the other (unrelated or rewritten history)"
        )
        undecided = undecided or _undecidable(manifests, rev, sets, where, reason)
    return undecided


def _undecidable(manifests: str, rev: str, sets: tuple[str, ...], where: str, reason: str) -> RevisionProblem:
    return RevisionProblem(
        kind="undecidable",
        manifests=manifests,
        recorded=rev,
        sets=sets,
        detail=(
            f"cannot tell whether revision {manifests} is older than {rev}, which the swarm's {where} "
            f"was applied at: {reason}"
        ),
        advice="pass --revision-check=warn to apply anyway (or --allow-older-revision)",
    )


class _Git:
    """Read-only ancestry questions to the repository at ``path``; git's output is never shown."""

    def __init__(self, path: Path | None) -> None:
        self.cwd = None if path is None else (path if path.is_dir() else path.parent)
        self._shallow: bool | None = None

    def _run(self, *args: str) -> subprocess.CompletedProcess[str] | None:
        if self.cwd is None:
            return None
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env["LC_ALL"] = "C"
        try:
            return subprocess.run(
                ["git", "-C", str(self.cwd), *args],
                capture_output=True,
                text=True,
                timeout=_CHECK_TIMEOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None

    def commit(self, rev: str) -> str | None:
        """The full sha of ``rev`` when it names a commit present in this repository."""
        if not rev or rev.startswith("-"):
            return None
        done = self._run("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")
        if done is None or done.returncode != 0:
            return None
        sha = done.stdout.strip()
        return sha if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", sha) else None

    def is_ancestor(self, older: str, newer: str) -> bool:
        done = self._run("merge-base", "--is-ancestor", older, newer)
        return done is not None and done.returncode == 0

    def shallow(self) -> bool:
        if self._shallow is None:
            done = self._run("rev-parse", "--is-shallow-repository")
            self._shallow = done is not None and done.stdout.strip() == "true"
        return self._shallow

    def is_repository(self) -> bool | None:
        """Whether the manifests are in a git work tree; None when git cannot be run at all."""
        if self.cwd is None:
            return False
        done = self._run("rev-parse", "--git-dir")
        return None if done is None else done.returncode == 0

    def why_unknown(self, rev: str, what: str) -> str:
        if self.is_repository() is None:
            return "git cannot be run here (is it installed?)"
        if self.shallow():
            return (
                f"{what} is not in the local repository, a shallow clone (fetch the full history, e.g. "
                "actions/checkout with fetch-depth: 0, GitLab GIT_DEPTH: 0)"
            )
        return f"{what} is not in the local repository (another branch or another repository?)"
