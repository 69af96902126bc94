"""Never the past over the present, against the real swarm and real git: manifests at a commit older
than the one the swarm records for the set are refused (exit 1, both commits named, nothing changed)
by ``apply`` and by the loop's tick; ``--allow-older-revision`` applies them; a shallow clone that
cannot decide refuses unless ``--revision-check=warn``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner, Result

from reconciler.cli import main
from reconciler.daemon.tick import TickSettings, make_tick
from reconciler.daemon.types import Reason, TickRequest, Trigger
from reconciler.engine.executor import ApplyOptions
from reconciler.errors import RevisionError

from .conftest import Lab
from .test_engine import _snapshot

pytestmark = pytest.mark.swarm

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}
# The commit the CI systems announce would win over `git rev-parse HEAD`: never let the test's own
# environment pick the revision.
CI_VARIABLES = (
    "SWARM_SECRETS_REVISION",
    "GITHUB_SHA",
    "CI_COMMIT_SHA",
    "DRONE_COMMIT_SHA",
    "BUILD_VCS_NUMBER",
)


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(cwd), *args],
        env={**os.environ, **GIT_ENV},
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def apply(lab: Lab, manifests: Path, *extra: str) -> Result:
    env: dict[str, str | None] = {**lab.env(), **dict.fromkeys(CI_VARIABLES)}
    return CliRunner().invoke(
        main, ["apply", str(manifests), "--yes", "--timeout", "90", *extra], env=env, catch_exceptions=False
    )


def revisions_on_swarm(api: docker.APIClient, lab: Lab) -> dict[str, str]:
    return {
        s["Spec"]["Name"]: s["Spec"]["Labels"].get("io.swarm-secrets.revision", "")
        for s in api.secrets()
        if s["Spec"]["Name"].startswith(lab.prefix)
    }


def test_an_older_commit_is_not_applied_over_a_newer_one(
    lab: Lab, api: docker.APIClient, tmp_path: Path
) -> None:
    repo = tmp_path  # lab.root (tmp_path / "manifests") is the manifests folder of this repository
    pw, app = lab.name("pw"), lab.create_service("app")
    git(repo, "init", "--quiet", "-b", "main")
    lab.manifest({pw: {"source": {"file": "pw.txt"}, "services": [app]}})

    commits = {}
    for name in ("A", "B", "C"):
        lab.write("pw.txt", f"value at {name}")
        git(repo, "add", "-A")
        git(repo, "commit", "--quiet", "-m", name)
        commits[name] = git(repo, "rev-parse", "HEAD")
    a, b, c = commits["A"], commits["B"], commits["C"]

    # apply at B
    git(repo, "checkout", "--quiet", "--detach", b)
    result = apply(lab, lab.root)
    assert result.exit_code == 0, result.output
    assert revisions_on_swarm(api, lab) == {f"{pw}_v1": b}
    before = _snapshot(api)

    # then at its parent A: refused, one line naming both commits, nothing changed
    git(repo, "checkout", "--quiet", "--detach", a)
    result = apply(lab, lab.root)
    assert result.exit_code == 1, result.output
    [line] = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert a in line and b in line and "--allow-older-revision" in line
    assert "Traceback" not in result.output
    assert _snapshot(api) == before
    # a plan (as on a pull request) changes and refuses nothing, but says that apply would refuse
    env: dict[str, str | None] = {**lab.env(), **dict.fromkeys(CI_VARIABLES)}
    planned = CliRunner().invoke(main, ["plan", str(lab.root)], env=env)
    assert planned.exit_code == 0, planned.output
    assert f"apply would refuse these manifests: revision {a} is older than {b}" in planned.output
    assert _snapshot(api) == before

    # the loop's tick refuses the same way (a failed tick, nothing changed)
    tick = make_tick(
        TickSettings(manifests=lab.root, docker_host=lab.docker_host, apply=ApplyOptions(timeout=90))
    )
    with pytest.raises(RevisionError, match=f"revision {a} is older than {b}"):
        tick(TickRequest(reason=Reason(Trigger.INTERVAL), manifests_dir=lab.root, revision=a))
    assert _snapshot(api) == before

    # a shallow clone at C cannot tell whether B is older: it says so and refuses ...
    shallow = tmp_path.parent / f"{tmp_path.name}-shallow"
    subprocess.run(
        ["git", "clone", "-q", "--depth", "1", "-b", "main", repo.as_uri(), str(shallow)],
        check=True, capture_output=True,
    )  # fmt: skip
    git(repo, "checkout", "--quiet", "main")
    result = apply(lab, shallow / "manifests")
    assert result.exit_code == 1, result.output
    assert "shallow clone" in result.output and c in result.output and b in result.output
    assert _snapshot(api) == before
    # ... unless told to warn and go on
    result = apply(lab, shallow / "manifests", "--revision-check=warn")
    assert result.exit_code == 0, result.output
    assert "applying anyway, as --revision-check=warn says" in result.output
    assert revisions_on_swarm(api, lab)[f"{pw}_v2"] == c

    # going back to A on purpose
    git(repo, "checkout", "--quiet", "--detach", a)
    result = apply(lab, lab.root, "--allow-older-revision")
    assert result.exit_code == 0, result.output
    # (v1, made at B, is still kept as the service's rollback target: B or C is named)
    assert f"revision {a} is older than " in result.output and "--allow-older-revision says" in result.output
    assert lab.service_secret_names(app) == {pw: f"{pw}_v3"}
    assert revisions_on_swarm(api, lab)[f"{pw}_v3"] == a
