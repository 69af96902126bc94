"""One bad set does not stop the others (the long-running loop; ``apply`` stays all-or-nothing): the
loader gives every problem to its set, converge holds failing sets back, and the plan then revokes,
collects and prunes nothing of them, on the in-memory swarm."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import converge
from reconciler.converge import Settings
from reconciler.engine.executor import ApplyOptions
from reconciler.errors import ManifestError, PolicyViolation, SourceError
from reconciler.manifests import loader
from tests.fakes.swarm import FakeSwarm

OPTIONS = ApplyOptions(poll_interval=0, timeout=5)


def doc(name: str, secrets: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "swarm-secrets/v1", "kind": "SecretSet", "metadata": {"name": name},
            "spec": {"secrets": dict(secrets)}}  # fmt: skip


def env_secret(var: str, *services: str | Mapping[str, Any]) -> dict[str, Any]:
    return {"source": {"env": var}, "services": list(services)}


def write(folder: Path, file: str, *docs: dict[str, Any]) -> Path:
    path = folder / file
    path.write_text(yaml.safe_dump_all(docs))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "manifests"
    path.mkdir()
    return path


# --- the loader -------------------------------------------------------------------------------------


def test_each_problem_goes_to_its_set_and_the_others_load(folder: Path) -> None:
    write(folder, "a.yaml", doc("a", {"a_pw": env_secret("A")}))
    write(folder, "b.yaml", {**doc("b", {}), "spec": {"secretz": {}}})  # schema
    write(folder, "c.yaml", doc("c", {"c_pw": env_secret("C", {"service": "web", "target": "/etc/passwd"})}))
    write(folder, "d.yaml", doc("d", {"d_pw": {"source": {"file": "../../outside"}, "services": []}}))
    found = loader.load_isolated([folder])
    assert [s.name for s in found.sets] == ["a"] and found.unattributed is None
    assert list(found.failing) == ["b", "c", "d"]
    assert isinstance(found.failing["b"], ManifestError) and "b.yaml" in str(found.failing["b"])
    assert isinstance(found.failing["c"], PolicyViolation) and "/etc/passwd" in str(found.failing["c"])
    assert isinstance(found.failing["d"], ManifestError)
    assert "outside the source root" in str(found.failing["d"])
    # apply stays all-or-nothing: the same problems, all of them, fail the whole load
    with pytest.raises(ManifestError) as whole:
        loader.load([folder])
    assert sorted(map(str, whole.value.problems)) == sorted(
        str(p) for error in found.failing.values() for p in error.problems
    )


def test_a_file_that_cannot_be_parsed_holds_back_the_sets_seen_in_it_and_what_follows(folder: Path) -> None:
    write(folder, "a.yaml", doc("a", {"a_pw": env_secret("A")}))
    text = yaml.safe_dump(doc("x", {"x_pw": env_secret("X")})) + "---\nkey: [unclosed\n"
    (folder / "multi.yaml").write_text(text)
    found = loader.load_isolated([folder])
    assert [s.name for s in found.sets] == ["a"]
    assert list(found.failing) == ["x"]  # seen before the error: held back with it
    assert found.unattributed is not None and "multi.yaml" in str(found.unattributed)  # and whatever follows


def test_a_document_whose_set_cannot_be_named_is_unattributed(folder: Path) -> None:
    write(folder, "a.yaml", doc("a", {"a_pw": env_secret("A")}))
    write(folder, "bad.yaml", doc("Not_A_Set_Name", {"pw": env_secret("P")}))
    found = loader.load_isolated([folder])
    assert [s.name for s in found.sets] == ["a"] and found.failing == {}
    assert found.unattributed is not None and "bad.yaml" in str(found.unattributed)


def test_a_clash_between_two_sets_holds_back_both(folder: Path) -> None:
    write(folder, "a.yaml", doc("a", {"pw": env_secret("A")}))
    write(folder, "b.yaml", doc("b", {"pw": env_secret("B")}))  # the same logical name: global
    write(folder, "c.yaml", doc("c", {"c_pw": env_secret("C")}))
    found = loader.load_isolated([folder])
    assert [s.name for s in found.sets] == ["c"] and list(found.failing) == ["a", "b"]
    assert str(found.failing["a"]) == str(found.failing["b"])  # one problem, given to both


# --- converge on the in-memory swarm ------------------------------------------------------------------


def reconcile(
    fake: FakeSwarm, folder: Path, environ: Mapping[str, str], *, prune: bool = False
) -> converge.Outcome:
    loaded = converge.load([folder], environ=environ, complete=prune, isolate=True)
    settings = Settings(apply=ApplyOptions(poll_interval=0, timeout=5, prune_orphans=prune))
    return converge.converge(loaded, fake, approval=converge.auto_approve, settings=settings)


def objects_of(fake: FakeSwarm, set_name: str) -> dict[str, int]:
    """The version index of every secret of ``set_name`` and of every service mounting one."""
    ids = {i for i, s in fake.secrets.items() if s["Spec"]["Labels"].get("io.swarm-secrets.set") == set_name}
    found = {i: fake.secrets[i]["Version"]["Index"] for i in ids}
    for service in fake.services.values():
        refs = service.spec["TaskTemplate"]["ContainerSpec"]["Secrets"]
        if any(r["SecretID"] in ids for r in refs):
            found[service.id] = service.version
    return found


@pytest.fixture
def two_sets(folder: Path) -> tuple[FakeSwarm, dict[str, str]]:
    """Sets a (a_pw → web) and b (b_pw → api), applied: both services on v1."""
    fake = FakeSwarm()
    fake.add_service("web")
    fake.add_service("api")
    write(folder, "a.yaml", doc("a", {"a_pw": env_secret("A", "web")}))
    write(folder, "b.yaml", doc("b", {"b_pw": env_secret("B", "api")}))
    environ = {"A": "a-one", "B": "b-one"}
    assert reconcile(fake, folder, environ).ok
    assert fake.service_secret_names("api") == {"b_pw": "b_pw_v1"}
    return fake, environ


@pytest.mark.parametrize("breakage", ["schema", "yaml", "source"])
def test_a_held_back_set_is_present_not_orphaned_even_with_prune_orphans(
    folder: Path, two_sets: tuple[FakeSwarm, dict[str, str]], breakage: str
) -> None:
    fake, environ = two_sets
    if breakage == "schema":
        write(folder, "b.yaml", {**doc("b", {}), "spec": {"secretz": {}}})
    elif breakage == "yaml":  # the file names no set any more: every set that did not load is held back
        (folder / "b.yaml").write_text("apiVersion: swarm-secrets/v1\nkind: [SecretSet\n")
    else:  # its value cannot be resolved
        del environ["B"]
    b_before = objects_of(fake, "b")
    outcome = reconcile(fake, folder, {**environ, "A": "a-two"}, prune=True)
    assert outcome.ok and outcome.result is not None
    assert fake.service_secret_names("web") == {"a_pw": "a_pw_v2"}  # the other set converged
    assert objects_of(fake, "b") == b_before  # nothing of b revoked, collected, pruned or touched
    assert outcome.prepared.held_back == {"b"}
    assert outcome.prepared.plan.orphaned_sets == ()
    assert all("'b'" not in w or "no loaded manifest" not in w for w in outcome.prepared.plan.warnings)
    expected = {"schema": ManifestError, "yaml": ManifestError, "source": SourceError}[breakage]
    if breakage == "yaml":
        assert outcome.prepared.loaded.failing == {} and outcome.prepared.loaded.unattributed is not None
    else:
        assert isinstance(outcome.prepared.loaded.failing["b"], expected)
    # once b is really gone from the manifests (and everything loads), it is an orphan and is pruned
    (folder / "b.yaml").unlink()
    environ["B"] = "b-one"
    pruned = reconcile(fake, folder, {**environ, "A": "a-two"}, prune=True)
    assert pruned.ok and pruned.prepared.plan.orphaned_sets == ("b",)
    assert fake.service_secret_names("api") == {}


def test_a_set_whose_service_is_missing_is_held_back_and_the_others_go_on(
    folder: Path, two_sets: tuple[FakeSwarm, dict[str, str]]
) -> None:
    fake, environ = two_sets
    write(folder, "b.yaml", doc("b", {"b_pw": env_secret("B", "api", "apii")}))  # a typo: no such service
    b_before = objects_of(fake, "b")
    outcome = reconcile(fake, folder, {**environ, "A": "a-two", "B": "b-two"})
    assert outcome.ok and fake.service_secret_names("web") == {"a_pw": "a_pw_v2"}
    assert isinstance(outcome.prepared.loaded.failing["b"], PolicyViolation)
    assert "apii" in str(outcome.prepared.loaded.failing["b"])
    assert objects_of(fake, "b") == b_before and "b_pw_v2" not in fake.secret_names()


def test_a_path_a_held_back_set_mounts_is_not_taken_by_another_set(
    folder: Path, two_sets: tuple[FakeSwarm, dict[str, str]]
) -> None:
    fake, environ = two_sets
    # b breaks while a starts granting the very path where api mounts b's secret: were b loaded, that
    # would be a clash; with b held back, the path stays b's
    write(folder, "a.yaml", doc("a", {"a_pw": env_secret("A", "web", {"service": "api", "target": "b_pw"})}))
    write(folder, "b.yaml", {**doc("b", {}), "spec": {"secretz": {}}})
    outcome = reconcile(fake, folder, environ)
    assert outcome.ok
    assert fake.service_secret_names("api") == {"b_pw": "b_pw_v1"}
    assert any("mounts b_pw_v1 of set 'b'" in w and "held back" in w for w in outcome.prepared.plan.warnings)


def test_without_isolation_one_bad_set_stops_everything(
    folder: Path, two_sets: tuple[FakeSwarm, dict[str, str]]
) -> None:
    fake, environ = two_sets
    write(folder, "b.yaml", {**doc("b", {}), "spec": {"secretz": {}}})
    versions = fake.versions()
    with pytest.raises(ManifestError):
        converge.load([folder], environ={**environ, "A": "a-two"})
    assert fake.versions() == versions
