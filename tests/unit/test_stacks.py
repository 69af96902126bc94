"""Stacks on plain data and the in-memory swarm: compose reading (docker/cli's interpolation, merge
and target rules), the grants against the compose files, the override, the deploy decision, one
update per service per release, the trust rules for Stack manifests, and ``env``'s variable names."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from reconciler import converge
from reconciler.cli.env import variables
from reconciler.core import guard
from reconciler.core.model import EnvSource, Origin, SecretSet, SecretSpec, SecretValue, ServiceGrant
from reconciler.core.plan import DeployStack, UpdateService, drift_cause
from reconciler.core.policy import Policy, Rule
from reconciler.core.rollout import Outcome
from reconciler.core.stacks import (
    LABEL_STACK_CONTENT,
    StackSpec,
    check_grants,
    override_document,
    variable_name,
)
from reconciler.engine.executor import ApplyOptions
from reconciler.errors import ConfigError, ManifestError, PolicyViolation, Problem
from reconciler.manifests import load_manifests
from reconciler.manifests.compose import interpolate, read_compose, stack_from_files
from tests.fakes.clock import FakeClock
from tests.fakes.stacks import FakeStackDeployer
from tests.fakes.swarm import FakeSwarm

ORIGIN = Origin(file="set.yaml", line=3, path="spec")


@pytest.fixture(autouse=True)
def _here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # messages name files relative to the working folder


STACK = """\
version: "3.8"
services:
  db:
    image: x
    environment: {RELEASE: "${RELEASE:-1}"}
    secrets: [db_password]
  web:
    image: x
    secrets:
      - source: db_password
        target: /etc/app/db_pass
        uid: "1000"
        mode: 0440
      - api_token
secrets:
  db_password: {file: ./db_password.txt}
  api_token: {external: true, name: "${TOKEN_NAME:-api_token}"}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def stack(
    tmp_path: Path, *texts: str, env: Mapping[str, str] | None = None, always: bool = False
) -> StackSpec:
    files = [write(tmp_path, f"c{i}.yml", text) for i, text in enumerate(texts or (STACK,))]
    return stack_from_files("shop", files, env or {}, always=always)


def secret_set(grants: Mapping[str, list[ServiceGrant]]) -> SecretSet:
    specs = tuple(
        SecretSpec(set_name="shop", secret=name, source=EnvSource(var="X"), grants=tuple(g), origin=ORIGIN)
        for name, g in grants.items()
    )
    return SecretSet(name="shop", secrets=specs, origin=ORIGIN)


def grant(service: str, target: str, **owner: Any) -> ServiceGrant:
    return ServiceGrant(
        service=service, target=target, origin=Origin(file="set.yaml", line=9, path="g"), **owner
    )


GRANTS = {
    "db_password": [
        grant("shop_db", "db_password"),
        grant("shop_web", "/etc/app/db_pass", uid="1000", mode=0o440),
    ],
    "api_token": [grant("shop_web", "api_token")],
}


# --- reading compose files as docker/cli does ------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("plain", "plain"),
        ("$$HOME and $${X}", "$HOME and ${X}"),
        ("${TAG}", "1.4"),
        ("$TAG-x", "1.4"),  # the unbraced form swallows "-x" as a default, as template.go does
        ("${MISSING}", ""),
        ("${MISSING:-d}", "d"),
        ("${EMPTY:-d}", "d"),
        ("${EMPTY-d}", ""),
        ("${MISSING-d}", "d"),
        ("a${TAG}b", "a1.4b"),
    ],
)
def test_interpolation_follows_docker_cli(template: str, expected: str) -> None:
    assert interpolate(template, {"TAG": "1.4", "EMPTY": ""}) == expected


@pytest.mark.parametrize("template", ["${MISSING:?say why}", "${EMPTY:?}", "${MISSING?}", "cost: 5$ "])
def test_interpolation_errors_name_no_value(template: str) -> None:
    with pytest.raises(ValueError) as info:
        interpolate(template, {"EMPTY": ""})
    assert "5$" not in str(info.value)


def test_compose_targets_owners_and_lines(tmp_path: Path) -> None:
    spec = stack(tmp_path, env={"TOKEN_NAME": "tok_v3"})
    uses = {(u.service, u.key): u for u in spec.compose.uses}
    db = uses[("db", "db_password")]
    assert (db.target, db.path, db.uid, db.gid, db.mode) == (
        "db_password",
        "/run/secrets/db_password",
        "0",
        "0",
        0o444,
    )
    web = uses[("web", "db_password")]
    assert (web.path, web.uid, web.gid, web.mode) == ("/etc/app/db_pass", "1000", "0", 0o440)  # YAML's octal
    assert (web.origin.file, web.origin.line, web.origin.path) == ("c0.yml", 10, "services.web.secrets[0]")
    assert uses[("web", "api_token")].path == "/run/secrets/api_token"  # the key, never `name:`
    token = spec.compose.secret("api_token")
    assert token is not None and token.external and token.name == "tok_v3"
    assert spec.compose.version == "3.8" and spec.swarm_services == ("shop_db", "shop_web")
    assert [h.what for h in spec.compose.host_files] == ["file of secret db_password"]


def test_compose_merge_later_files_win(tmp_path: Path) -> None:
    override = """\
    version: "3.8"
    services:
      web:
        secrets:
          - source: db_password
            target: other
      worker: {image: x}
    secrets:
      db_password: {external: true, name: elsewhere}
    """
    spec = stack(tmp_path, STACK, override)
    web = next(u for u in spec.compose.uses if (u.service, u.key) == ("web", "db_password"))
    assert (web.target, web.uid, web.mode, web.origin.file) == ("other", "0", 0o444, "c1.yml")
    assert spec.compose.service_names == ("db", "web", "worker")
    merged = spec.compose.secret("db_password")
    assert merged is not None and merged.external and merged.file is None  # replaced whole


def test_compose_problems_name_file_and_line(tmp_path: Path) -> None:
    bad = """\
    services:
      db:
        secrets: [nope]
        environment: {X: "${REQUIRED:?set it}"}
    """
    problems: list[Problem] = []
    read_compose([write(tmp_path, "bad.yml", bad)], {}, problems)
    text = [str(p) for p in problems]
    assert any(
        t.startswith("bad.yml:3: services.db.secrets[0]: service db mounts secret 'nope'") for t in text
    )
    expected = "bad.yml:4: services.db.environment.X: cannot interpolate: required variable REQUIRED"
    assert any(t.startswith(expected) for t in text)


# --- the grants against the compose files ---------------------------------------------------------------


def test_consistent_grants_have_no_problems(tmp_path: Path) -> None:
    assert check_grants(stack(tmp_path), [secret_set(GRANTS)]) == []


def test_one_compose_secret_for_two_logical_secrets_names_both_files(tmp_path: Path) -> None:
    grants = {
        "db_password": [grant("shop_db", "db_password")],
        "other_pw": [grant("shop_web", "/etc/app/db_pass", uid="1000", mode=0o440)],
        "api_token": [grant("shop_web", "api_token")],
    }
    (problem,) = check_grants(stack(tmp_path), [secret_set(grants)])
    assert (problem.file, problem.line) == ("c0.yml", 6)
    assert "compose secret 'db_password'" in problem.message
    assert (
        "shop/db_password (set.yaml:9)" in problem.message and "shop/other_pw (set.yaml:9)" in problem.message
    )
    assert "c0.yml:10" in problem.message


def test_other_owner_or_mode_than_the_compose_file_is_a_problem(tmp_path: Path) -> None:
    grants = dict(
        GRANTS, db_password=[grant("shop_db", "db_password"), grant("shop_web", "/etc/app/db_pass")]
    )
    (problem,) = check_grants(stack(tmp_path), [secret_set(grants)])
    assert problem.file == "set.yaml" and "c0.yml:10" in problem.message
    assert "uid 0, gid 0, mode 0444" in problem.message and "uid 1000, gid 0, mode 0440" in problem.message


def test_a_grant_the_compose_files_do_not_mount_is_a_problem(tmp_path: Path) -> None:
    grants = dict(GRANTS, extra=[grant("shop_db", "/run/secrets/extra")])
    (problem,) = check_grants(stack(tmp_path), [secret_set(grants)])
    assert "mount no secret at /run/secrets/extra" in problem.message and "add `- source:" in problem.message


def test_a_pinned_compose_secret_mounted_where_nothing_is_granted_is_a_problem(tmp_path: Path) -> None:
    grants = {"db_password": [grant("shop_db", "db_password")], "api_token": GRANTS["api_token"]}
    (problem,) = check_grants(stack(tmp_path), [secret_set(grants)])
    assert (problem.file, problem.line) == ("c0.yml", 10)
    assert "shop_web mounts it at /etc/app/db_pass, where no manifest grants db_password" in problem.message


# --- the override ---------------------------------------------------------------------------------------


def test_override_pins_names_and_labels_services(tmp_path: Path) -> None:
    spec = stack(tmp_path)
    document = override_document(
        spec, {"db_password": "db_password_v3"}, labels={"io.swarm-secrets.stack": "shop"}
    )
    assert document == {
        "version": "3.8",
        "services": {
            "db": {"deploy": {"labels": {"io.swarm-secrets.stack": "shop"}}},
            "web": {"deploy": {"labels": {"io.swarm-secrets.stack": "shop"}}},
        },
        "secrets": {"db_password": {"external": True, "name": "db_password_v3"}},
    }


def test_override_before_compose_3_5_uses_external_name(tmp_path: Path) -> None:
    spec = stack(tmp_path, STACK.replace('"3.8"', "3.4"))
    assert override_document(spec, {"db_password": "v"})["secrets"] == {
        "db_password": {"external": {"name": "v"}}
    }


# --- planning and executing a deploy on the in-memory swarm ----------------------------------------------


def run(spec: StackSpec, values: Mapping[str, bytes]) -> converge.Loaded:
    sets = (secret_set(GRANTS),)
    return converge.Loaded(
        sets=sets,
        values={("shop", k): SecretValue(v) for k, v in values.items()},
        revision="rev1",
        stacks=(spec,),
    )


def converge_once(
    fake: FakeSwarm, deployer: FakeStackDeployer, loaded: converge.Loaded, **held: Any
) -> converge.Outcome:
    settings = converge.Settings(apply=ApplyOptions(timeout=30, **held), deployer=deployer)
    return converge.converge(
        loaded, fake, approval=converge.auto_approve, settings=settings, clock=FakeClock()
    )


def test_a_release_that_rotates_a_value_updates_each_service_once(tmp_path: Path) -> None:
    fake, deployer = FakeSwarm(), FakeStackDeployer(FakeSwarm())
    deployer.swarm = fake
    first = converge_once(fake, deployer, run(stack(tmp_path), {"db_password": b"one", "api_token": b"t"}))
    assert first.ok and [d.stack for d in first.prepared.plan.deploys] == ["shop"]
    assert "first deploy" in first.prepared.plan.deploys[0].reason
    assert not first.prepared.plan.updates  # grants to services the deploy creates: no update, no "missing"
    assert fake.mounted("shop_web") == {"/etc/app/db_pass": b"one", "/run/secrets/api_token": b"t"}
    fake.written.clear()

    # nothing changed: no deploy
    again = converge_once(fake, deployer, run(stack(tmp_path), {"db_password": b"one", "api_token": b"t"}))
    assert again.prepared.plan.empty and again.result is None

    # a commit that changes a value and the compose content: one deploy, each service written once
    changed = stack(tmp_path, STACK.replace("${RELEASE:-1}", "2"))
    outcome = converge_once(fake, deployer, run(changed, {"db_password": b"two", "api_token": b"t"}))
    (deploy,) = outcome.prepared.plan.deploys
    assert (
        outcome.ok and "compose content changed" in deploy.reason and "pins db_password_v2" in deploy.reason
    )
    assert dict(deploy.pins) == {"db_password": "db_password_v2", "api_token": "api_token_v1"}
    assert sorted(fake.written) == ["shop_db", "shop_web"]
    assert fake.mounted("shop_db") == {"/run/secrets/db_password": b"two"}
    assert fake.service_by_name("shop_db").spec["Labels"][LABEL_STACK_CONTENT] == changed.content
    assert outcome.result is not None
    assert {r.service: r.outcome for r in outcome.result.rollouts} == {
        "shop_db": Outcome.CONVERGED,
        "shop_web": Outcome.CONVERGED,
    }


def test_old_versions_are_collected_only_when_no_spec_previous_spec_or_task_needs_them(
    tmp_path: Path,
) -> None:
    fake = FakeSwarm()
    deployer = FakeStackDeployer(fake)
    for release, value in enumerate((b"one", b"two", b"two", b"two"), start=1):
        spec = stack(tmp_path, STACK.replace("${RELEASE:-1}", str(release)), always=True)
        outcome = converge_once(fake, deployer, run(spec, {"db_password": value, "api_token": b"t"}))
        assert outcome.ok
        names = {n for n in fake.secret_names() if n.startswith("db_password")}
        if release == 2:  # v1 is the PreviousSpec of both services: kept
            assert names == {"db_password_v1", "db_password_v2"}
            assert [k.name for k in outcome.prepared.plan.kept] == ["db_password_v1"]
            previous = fake.service_by_name("shop_db").previous or {}
            assert [r["SecretName"] for r in previous["TaskTemplate"]["ContainerSpec"]["Secrets"]] == [
                "db_password_v1"
            ]
        if release == 3:  # the next release makes v2 the PreviousSpec: v1 goes after the rollouts
            (removal,) = outcome.prepared.plan.removals
            assert removal.name == "db_password_v1" and removal.after == ("shop_db", "shop_web")
            assert names == {"db_password_v2"}


def test_a_failed_deploy_is_reported_and_held(tmp_path: Path) -> None:
    fake = FakeSwarm()
    deployer = FakeStackDeployer(fake, fail=True)
    outcome = converge_once(fake, deployer, run(stack(tmp_path), {"db_password": b"one", "api_token": b"t"}))
    assert outcome.result is not None and not outcome.ok
    (failed,) = outcome.result.rollouts
    assert failed.service == "stack shop" and failed.outcome is Outcome.FAILED
    # a failed *rollout* is held by the loop; the key identifies this content and these versions
    deploy = outcome.prepared.plan.deploys[0]
    assert failed.key == (f"stack:{deploy.stack}", frozenset({deploy.content, *deploy.pinned}))
    held = converge_once(fake, deployer, run(stack(tmp_path), {"db_password": b"one", "api_token": b"t"}),
                         held=frozenset({failed.key}))  # fmt: skip
    assert held.result is not None and held.result.rollouts[0].outcome is Outcome.HELD
    assert len(deployer.deploys) == 1


def test_a_plain_stack_deploy_that_reverts_a_rotation_is_drift_with_its_cause(tmp_path: Path) -> None:
    fake = FakeSwarm()
    spec = stack(tmp_path)
    values = {"db_password": b"one", "api_token": b"t"}
    assert converge_once(fake, FakeStackDeployer(fake), run(spec, values)).ok
    # the team's ordinary `docker stack deploy` of the original compose file (no override)
    FakeStackDeployer(fake).deploy(spec, {})
    plain = converge.Loaded(sets=(secret_set(GRANTS),), values=run(spec, values).values, revision="r")
    outcome = converge.converge(plain, fake, approval=converge.auto_approve, clock=FakeClock())
    updates = outcome.prepared.plan.updates
    assert {u.service for u in updates} == {"shop_db", "shop_web"}
    change = next(c for u in updates for c in u.changes if c.secret == "db_password")
    assert drift_cause(change) == "stack_deploy"
    assert change.reason.startswith(
        "drift: a `docker stack deploy` of stack 'shop' put its own secret 'shop_db_password'"
    )
    assert outcome.result is not None
    assert {r.drift_cause for r in outcome.result.rollouts} == {"stack_deploy"}


def test_the_planner_writes_no_update_for_services_a_stack_deploys(tmp_path: Path) -> None:
    fake = FakeSwarm()
    spec = stack(tmp_path)
    assert converge_once(
        fake, FakeStackDeployer(fake), run(spec, {"db_password": b"1", "api_token": b"t"})
    ).ok
    prepared = converge.prepare(
        run(spec, {"db_password": b"2", "api_token": b"t"}), fake, converge.Settings(read_only=True)
    )
    assert not [a for a in prepared.plan.actions if isinstance(a, UpdateService)]
    (deploy,) = [a for a in prepared.plan.actions if isinstance(a, DeployStack)]
    changes = {s.service: [c.new for c in s.changes] for s in deploy.services}
    assert changes == {"shop_db": ["db_password_v2"], "shop_web": ["db_password_v2"]}


def test_a_deploy_without_a_docker_cli_is_refused_before_any_change(tmp_path: Path) -> None:
    fake = FakeSwarm()
    before = fake.versions()
    with pytest.raises(Exception, match="cannot run the docker CLI"):
        converge.converge(
            run(stack(tmp_path), {"db_password": b"1", "api_token": b"t"}),
            fake,
            approval=converge.auto_approve,
            clock=FakeClock(),
        )
    assert set(fake.versions()) <= set(before) | {i for i, c in fake.configs.items()}
    assert not fake.secret_names()


# --- Stack manifests: loading and the trust rules ---------------------------------------------------------

STACK_MANIFEST = """\
apiVersion: swarm-secrets/v1
kind: Stack
metadata: {name: shop}
spec:
  compose: [stack.yml]
  env: {RELEASE: "7"}
"""
SET_MANIFEST = """\
apiVersion: swarm-secrets/v1
kind: SecretSet
metadata: {name: shop}
spec:
  secrets:
    db_password:
      source: {env: PW}
      services: [shop_db]
"""
SMALL_STACK = """\
version: "3.8"
services:
  db:
    image: x
    environment: {RELEASE: "${RELEASE}"}
    secrets: [db_password]
secrets:
  db_password: {external: true}
"""


def manifests(tmp_path: Path, stack_text: str = STACK_MANIFEST, compose: str = SMALL_STACK) -> Path:
    (tmp_path / ".git").mkdir(exist_ok=True)  # the source root
    write(tmp_path, "stack.yml", compose)
    write(tmp_path, "stack-manifest.yaml", stack_text)
    write(tmp_path, "set.yaml", SET_MANIFEST)
    return tmp_path


def test_a_stack_manifest_loads_with_its_compose_files(tmp_path: Path) -> None:
    found = load_manifests([manifests(tmp_path)])
    (spec,) = found.stacks
    assert spec.name == "shop" and spec.environment == {"RELEASE": "7"} and not spec.always
    assert spec.files == (tmp_path / "stack.yml",) and spec.location == "stack-manifest.yaml"
    assert [s.name for s in found.sets] == ["shop"]


def test_stack_manifest_schema_problems_have_lines(tmp_path: Path) -> None:
    bad = STACK_MANIFEST.replace("compose: [stack.yml]", "compose: []\n  prune: maybe")
    with pytest.raises(ManifestError) as info:
        load_manifests([manifests(tmp_path, bad)])
    text = str(info.value)
    assert "stack-manifest.yaml:5: spec.compose: compose must list at least one compose file" in text
    assert "stack-manifest.yaml:6: spec.prune: prune must be true or false" in text


def test_a_stack_may_name_no_file_outside_its_repository(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    repo = tmp_path / "repo"
    repo.mkdir()
    compose = SMALL_STACK + "configs:\n  c: {file: ../outside.txt}\n"
    with pytest.raises(
        ManifestError, match=r"would read .*outside.txt \(file of config c\), outside the source root"
    ):
        load_manifests([manifests(repo, compose=compose)])


def rule(**fields: Any) -> Rule:
    return Rule(
        number=1, file="policy.yaml", line=2, sets=("shop",), services=("shop_*",), env=("PW",), **fields
    )


def test_a_policy_allows_a_stack_only_in_deploy(tmp_path: Path) -> None:
    path = manifests(tmp_path)
    with pytest.raises(PolicyViolation, match=r"stack 'shop' may not be deployed by a manifest: no rule"):
        load_manifests([path], guard.Boundary(policy=Policy(file="policy.yaml", rules=(rule(),))))
    allowed = guard.Boundary(policy=Policy(file="policy.yaml", rules=(rule(deploy=("sh*",)),)))
    assert load_manifests([path], allowed).stacks


def test_run_refuses_stack_manifests_without_a_policy(tmp_path: Path) -> None:
    with pytest.raises(PolicyViolation, match=r"refused in `run` without a policy"):
        load_manifests([manifests(tmp_path)], guard.Boundary(daemon=True))


def test_a_stack_that_reaches_the_engine_needs_a_rule_naming_it(tmp_path: Path) -> None:
    compose = SMALL_STACK.replace(
        "    image: x\n", "    image: x\n    volumes: [/var/run/docker.sock:/s]\n", 1
    )
    path = manifests(tmp_path, compose=compose)
    with pytest.raises(
        PolicyViolation, match=r"service 'shop_db' mounts the engine socket /var/run/docker.sock"
    ):
        load_manifests([path])
    globbed = guard.Boundary(policy=Policy(file="p", rules=(rule(deploy=("sh*",)),)))
    with pytest.raises(PolicyViolation, match="does not name stack 'shop' exactly"):
        load_manifests([path], globbed)
    exact = guard.Boundary(policy=Policy(file="p", rules=(rule(deploy=("shop",)),)))
    assert load_manifests([path], exact).stacks


@pytest.mark.parametrize("variable", ["LD_PRELOAD", "PATH", "DOCKER_HOST", "HTTPS_PROXY", "SOPS_AGE_KEY"])
def test_stack_variables_may_not_configure_the_programs_run(tmp_path: Path, variable: str) -> None:
    text = STACK_MANIFEST.replace('{RELEASE: "7"}', f'{{RELEASE: "7", {variable}: "x"}}')
    with pytest.raises(PolicyViolation, match=f"spec.env.{variable}: {variable}"):
        load_manifests([manifests(tmp_path, text)])


def test_no_stack_may_deploy_the_reconciler(tmp_path: Path) -> None:
    with pytest.raises(PolicyViolation, match="is the reconciler itself"):
        load_manifests([manifests(tmp_path)], guard.Boundary(self_service="shop_db"))


# --- swarm-secrets env --------------------------------------------------------------------------------------


def test_variable_names() -> None:
    assert variable_name("db_password") == "DB_PASSWORD"
    assert variable_name("tls.key-2", "SS_") == "SS_TLS_KEY_2"
    assert variables({("a", "db.pw"): "db.pw_v2", ("a", "x"): "x_v1"}, "") == {
        "DB_PW": "db.pw_v2",
        "X": "x_v1",
    }
    with pytest.raises(ConfigError, match="a/db-pw and a/db_pw both become DB_PW"):
        variables({("a", "db_pw"): "db_pw_v1", ("a", "db-pw"): "db-pw_v1"}, "")


# --- the plan's renderings and the saved plan carry the deploy -----------------------------------------


def test_a_deploy_renders_and_round_trips_through_a_saved_plan(tmp_path: Path) -> None:
    from reconciler.core.saved import dumps, loads
    from reconciler.render.plan import render_json, render_markdown, render_text

    fake = FakeSwarm()
    spec = stack(tmp_path)
    assert converge_once(
        fake, FakeStackDeployer(fake), run(spec, {"db_password": b"1", "api_token": b"t"})
    ).ok
    prepared = converge.prepare(
        run(spec, {"db_password": b"2", "api_token": b"t"}), fake, converge.Settings(read_only=True)
    )
    text = render_text(prepared.plan)
    assert "~ deploy stack shop: pins db_password_v2" in text and "~ shop_db: updated once, with:" in text
    assert "Plan: 1 to create, 1 stack to deploy, 0 services to update" in text
    assert '"kind": "deploy_stack"' in render_json(prepared.plan)
    assert "#### Deploy stacks (1)" in render_markdown(prepared.plan)
    saved = converge.save_plan(prepared, converge.Settings(), manifests_digest="sha256:x")
    again = loads(dumps(saved))
    assert again.plan == prepared.plan
    assert {name for name, _ in again.basis.services.values()} == {"shop_db", "shop_web"}


class _SlowToStop(FakeSwarm):
    """Old tasks that were told to stop keep ``slow`` for the next ``looks`` observations."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = ""
        self.looks = 0

    def observe(self, *, lean: bool = False, sets: Any = None) -> Any:
        from dataclasses import replace

        live = super().observe(lean=lean, sets=sets)
        secret_id = next((i for i, s in self.secrets.items() if s["Spec"]["Name"] == self.slow), None)
        if secret_id is None or self.looks <= 0:
            return live
        self.looks -= 1
        return replace(
            live,
            task_secret_ids=live.task_secret_ids | {secret_id},
            stopping_task_secret_ids=live.stopping_task_secret_ids | {secret_id},
        )


def test_collection_waits_for_old_tasks_told_to_stop(tmp_path: Path) -> None:
    fake = _SlowToStop()
    deployer = FakeStackDeployer(fake)
    for release, value in enumerate((b"one", b"two"), start=1):
        spec = stack(tmp_path, STACK.replace("${RELEASE:-1}", str(release)), always=True)
        assert converge_once(fake, deployer, run(spec, {"db_password": value, "api_token": b"t"})).ok
    fake.slow, fake.looks = "db_password_v1", 3  # its old tasks are still stopping when the release ends
    spec = stack(tmp_path, STACK.replace("${RELEASE:-1}", "3"), always=True)
    outcome = converge_once(fake, deployer, run(spec, {"db_password": b"two", "api_token": b"t"}))
    assert outcome.result is not None and outcome.result.removed == ("db_password_v1",)
    assert outcome.result.kept_back == () and fake.looks == 0


# --- the long-running loop: a failing Stack manifest, or a held-back set, stops only the deploy ----------


def test_a_failing_stack_manifest_is_its_own_problem_not_the_same_named_set(tmp_path: Path) -> None:
    from reconciler.manifests.loader import load_isolated

    found = load_isolated([manifests(tmp_path, STACK_MANIFEST.replace("[stack.yml]", "[]"))])
    assert [s.name for s in found.sets] == ["shop"] and found.failing == {} and found.unattributed is None
    assert list(found.failing_stacks) == ["shop"] and found.stacks == ()
    assert "compose must list at least one compose file" in str(found.failing_stacks["shop"])
    # a sound one loads, with the set
    assert [s.name for s in load_isolated([manifests(tmp_path)]).stacks] == ["shop"]


def test_a_stack_whose_services_use_a_held_back_set_is_not_deployed(tmp_path: Path) -> None:
    fake = FakeSwarm()
    deployer = FakeStackDeployer(fake)
    settings = converge.Settings(apply=ApplyOptions(timeout=30), deployer=deployer)

    def reconcile(environ: Mapping[str, str]) -> converge.Outcome:
        loaded = converge.load([tmp_path], environ=environ, isolate=True)
        return converge.converge(
            loaded, fake, approval=converge.auto_approve, settings=settings, clock=FakeClock()
        )

    manifests(tmp_path)
    assert reconcile({"PW": "one"}).ok and len(deployer.deploys) == 1
    assert fake.mounted("shop_db") == {"/run/secrets/db_password": b"one"}
    before = fake.service_by_name("shop_db").version
    # the set's source breaks while the compose content changes: the deploy could not pin db_password,
    # and would put the stack's own shop_db_password back; so the stack waits for the set
    write(tmp_path, "stack.yml", SMALL_STACK.replace("image: x", "image: y"))
    outcome = reconcile({})
    assert outcome.prepared.held_back == {"shop"} and not outcome.prepared.plan.deploys
    assert list(outcome.prepared.loaded.failing_stacks) == ["shop"]
    assert "held-back sets (shop)" in str(outcome.prepared.loaded.failing_stacks["shop"])
    assert len(deployer.deploys) == 1 and fake.service_by_name("shop_db").version == before
    # the set is fixed: the stack is deployed again, pinned
    assert reconcile({"PW": "one"}).ok and len(deployer.deploys) == 2
    assert fake.mounted("shop_db") == {"/run/secrets/db_password": b"one"}


def test_a_stack_not_deployed_is_named_among_the_failing() -> None:
    from reconciler.daemon.tick import failing_classes

    loaded = converge.Loaded(
        sets=(),
        values={},
        revision=None,
        isolated=True,
        failing={"pay": PolicyViolation([Problem("p.yaml", 1, "", "x")])},
        failing_stacks={"shop": ManifestError([Problem("s.yaml", 1, "", "y")])},
    )
    assert failing_classes(loaded, frozenset({"old"})) == {
        "old": "manifest",
        "pay": "policy",
        "stack/shop": "manifest",
    }
