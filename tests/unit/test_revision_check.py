"""The revision check (``manifests/revision.py``) against real git repositories: older, newer, equal,
diverged, shallow, unknown, not in git; and what the guard makes of each problem."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from reconciler.core.model import (
    LABEL_MANAGED,
    LABEL_REVISION,
    LABEL_SET,
    LABEL_VERSION,
    LiveSecret,
    LiveState,
)
from reconciler.manifests.revision import RevisionGuard, RevisionProblem, check_revision, recorded_revisions

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(cwd), *args],
        env={**os.environ, **GIT_ENV},
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def commit(repo: Path, text: str) -> str:
    (repo / "manifests").mkdir(exist_ok=True)
    (repo / "manifests" / "set.yaml").write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", text)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "--quiet", "-b", "main")
    return path


def test_older_manifests_are_a_problem_naming_both_commits(repo: Path) -> None:
    a = commit(repo, "a")
    b = commit(repo, "b")
    problem = check_revision(a, {b: ("shop",)}, repo / "manifests")
    assert problem is not None and problem.kind == "older"
    assert (problem.manifests, problem.recorded, problem.sets) == (a, b, ("shop",))
    assert a in problem.message and b in problem.message and "'shop'" in problem.message
    assert "--allow-older-revision" in problem.message and "\n" not in problem.message


def test_newer_equal_and_dirty_manifests_pass(repo: Path) -> None:
    a = commit(repo, "a")
    b = commit(repo, "b")
    assert check_revision(b, {a: ("shop",)}, repo) is None  # moving forward
    assert check_revision(b, {b: ("shop",)}, repo) is None  # the same commit
    assert check_revision(f"{b}-dirty", {b: ("shop",), a: ("other",)}, repo) is None
    assert check_revision(b, {f"{a}-dirty": ("shop",)}, repo) is None
    assert check_revision(b, {}, repo) is None  # a fresh swarm
    assert check_revision(None, {b: ("shop",)}, repo) is None  # revision unknown: nothing to compare


def test_the_older_problem_wins_over_an_undecidable_one(repo: Path) -> None:
    a = commit(repo, "a")
    b = commit(repo, "b")
    problem = check_revision(a, {"0" * 40: ("elsewhere",), b: ("shop",)}, repo)
    assert problem is not None and problem.kind == "older" and problem.recorded == b


def test_diverged_history_cannot_be_decided(repo: Path) -> None:
    base = commit(repo, "base")
    one = commit(repo, "one")
    git(repo, "checkout", "--quiet", "-b", "other", base)
    two = commit(repo, "two")
    problem = check_revision(two, {one: ("shop",)}, repo)
    assert problem is not None and problem.kind == "undecidable"
    assert "neither commit descends from the other" in problem.message
    assert one in problem.message and two in problem.message and "--revision-check=warn" in problem.message


def test_a_commit_unknown_to_the_repository_cannot_be_decided(repo: Path) -> None:
    a = commit(repo, "a")
    problem = check_revision(a, {"f" * 40: ("shop",)}, repo)
    assert problem is not None and problem.kind == "undecidable"
    assert "not in the local repository" in problem.message


def test_a_shallow_clone_cannot_decide(repo: Path, tmp_path: Path) -> None:
    a = commit(repo, "a")
    b = commit(repo, "b")
    c = commit(repo, "c")
    shallow = tmp_path / "shallow"
    subprocess.run(
        ["git", "clone", "--quiet", "--depth", "1", repo.as_uri(), str(shallow)],
        check=True,
        capture_output=True,
    )
    # the swarm records b, which the one-commit clone at c does not have
    problem = check_revision(c, {b: ("shop",)}, shallow / "manifests")
    assert problem is not None and problem.kind == "undecidable"
    assert "shallow clone" in problem.message and "fetch-depth: 0" in problem.message
    # with two commits of history the older one is found again
    git(shallow, "fetch", "--quiet", "--deepen", "1")
    assert check_revision(c, {b: ("shop",)}, shallow) is None
    older = check_revision(b, {c: ("shop",)}, shallow)
    assert older is not None and older.kind == "older"
    # a commit still beyond the shallow boundary
    beyond = check_revision(c, {a: ("shop",)}, shallow)
    assert beyond is not None and beyond.kind == "undecidable" and "shallow" in beyond.message


def test_manifests_outside_git_are_not_checked(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    # a --revision label there is not a commit, and there is no history to ask
    assert check_revision("release-7", {"release-8": ("shop",)}, folder) is None
    assert check_revision("release-7", {"release-8": ("shop",)}, None) is None


def test_git_output_never_reaches_the_message(repo: Path) -> None:
    commit(repo, "a")
    problem = check_revision("MARKER-not-a-ref", {"--output=/tmp/x": ("shop",)}, repo)
    assert problem is not None and problem.kind == "undecidable"
    assert "fatal" not in problem.message and "usage" not in problem.message.lower()


def _secret(set_name: str, revision: str | None, *, managed: bool = True, version: int = 1) -> LiveSecret:
    labels = {LABEL_SET: set_name, LABEL_VERSION: str(version)}
    if managed:
        labels[LABEL_MANAGED] = "true"
    if revision is not None:
        labels[LABEL_REVISION] = revision
    return LiveSecret(id=f"{set_name}{version}{revision}", name=f"x_v{version}", labels=labels)


def test_recorded_revisions_only_of_the_sets_being_applied() -> None:
    live = LiveState(
        secrets=(
            _secret("shop", "aaa"),
            _secret("shop", "bbb", version=2),
            _secret("blog", "bbb"),
            _secret("other-repo", "ccc"),  # another repository's set: its commits are not ours to judge
            _secret("shop", "ddd", managed=False),
            _secret("shop", None, version=3),
        )
    )
    assert recorded_revisions(live, ["shop", "blog"]) == {"aaa": ("shop",), "bbb": ("blog", "shop")}


def _problem(kind: str) -> RevisionProblem:
    return RevisionProblem(kind=kind, manifests="a", recorded="b", sets=("s",), detail="d", advice="x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("allow_older", "undecidable", "older_refused", "undecidable_refused"),
    [
        (False, "error", True, True),
        (False, "warn", True, False),
        (True, "error", False, False),
        (True, "warn", False, False),
    ],
)
def test_the_guard(
    allow_older: bool, undecidable: str, older_refused: bool, undecidable_refused: bool
) -> None:
    guard = RevisionGuard(repository=None, allow_older=allow_older, undecidable=undecidable)  # type: ignore[arg-type]
    assert guard.refuses(_problem("older")) is older_refused
    assert guard.refuses(_problem("undecidable")) is undecidable_refused
