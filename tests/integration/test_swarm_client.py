"""The swarm client against the real engine: observe, create, error mapping, raw service round-trip."""

from __future__ import annotations

import gc

import docker
import pytest

from reconciler.core.model import LABEL_MANAGED, SecretValue
from reconciler.engine.swarm import Swarm
from reconciler.errors import SwarmConflict, SwarmRefused, SwarmUnavailable

from .conftest import Lab


def test_create_observe_and_remove_a_secret(swarm: Swarm, lab: Lab) -> None:
    name = lab.name("pw_v1")
    secret_id = swarm.create_secret(name, SecretValue(b"s3cret"), {LABEL_MANAGED: "true", "team": "data"})
    live = swarm.observe()
    found = live.secret_by_id(secret_id)
    assert found is not None
    assert found.name == name
    assert found.labels["team"] == "data"
    swarm.remove_secret(secret_id, name)
    assert swarm.observe().secret_by_id(secret_id) is None


def test_create_twice_is_a_conflict_and_names_are_case_insensitive(swarm: Swarm, lab: Lab) -> None:
    name = lab.name("pw_v1")
    swarm.create_secret(name, SecretValue(b"a"), {})
    with pytest.raises(SwarmConflict):
        swarm.create_secret(name.upper(), SecretValue(b"b"), {})


def test_engine_refusals_are_translated_without_the_value(swarm: Swarm, lab: Lab) -> None:
    with pytest.raises(SwarmRefused) as caught:
        swarm.create_secret("bad name!", SecretValue(b"hunter2-value"), {})
    assert "hunter2-value" not in str(caught.value)
    assert "creating secret bad name!" in str(caught.value)


def test_unreachable_engine_is_one_clear_error() -> None:
    with pytest.raises(SwarmUnavailable) as caught:
        Swarm.connect("unix:///nonexistent/docker.sock", timeout=2)
    assert "cannot reach" in str(caught.value) or "connecting" in str(caught.value)
    del caught
    gc.collect()  # a socket docker-py leaked would be reported now (Swarm.connect collects it itself)


def test_service_round_trip_changes_only_secrets(swarm: Swarm, lab: Lab, api: docker.APIClient) -> None:
    name = lab.name("pw_v1")
    secret_id = swarm.create_secret(name, SecretValue(b"x"), {})
    service = lab.create_service("app", replicas=0, env=["A=1"], labels={"keep": "me"})
    before = api.inspect_service(service)
    raw = swarm.inspect_service(before["ID"])
    ref = {
        "SecretID": secret_id,
        "SecretName": name,
        "File": {"Name": "pw", "UID": "0", "GID": "0", "Mode": 0o400},
    }
    swarm.write_service_secrets(raw, [ref])
    after = api.inspect_service(service)
    assert after["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"] == [ref]
    # everything else byte for byte
    before_spec = before["Spec"]
    after_spec = after["Spec"]
    before_spec["TaskTemplate"]["ContainerSpec"].pop("Secrets", None)
    after_spec["TaskTemplate"]["ContainerSpec"].pop("Secrets", None)
    assert after_spec == before_spec
    # writing again with the now stale version is a conflict, not a crash
    with pytest.raises(SwarmConflict):
        swarm.write_service_secrets(raw, [])


def test_observe_costs_a_fixed_number_of_requests(swarm: Swarm, lab: Lab) -> None:
    before = swarm.requests
    swarm.observe()
    # secrets, services, tasks and nodes (a task on a node that is down keeps no version: issue 12)
    assert swarm.requests - before == 4
