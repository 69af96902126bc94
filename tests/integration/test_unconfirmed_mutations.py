"""Mutations the engine carried out but did not confirm (what a leader election can do to a request:
raft may still commit a proposal whose caller was told it failed), on the real engine: the executor
observes again instead of repeating them, so no version is made twice and a landed update is watched.

The engine is real; only the answer is replaced: each wrapped call really happens, then raises the
error an election gives (``SwarmNoLeader``, the translation of ``rpc error: … lost leader status``).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from reconciler import converge
from reconciler.core.model import SecretValue
from reconciler.engine import executor
from reconciler.engine.executor import ApplyOptions
from reconciler.engine.protocol import RawService
from reconciler.engine.swarm import Swarm
from reconciler.errors import SwarmNoLeader

from .conftest import Lab

pytestmark = pytest.mark.swarm

LOST = "rpc error: code = Unknown desc = raft: failed to process the request: node lost leader status"


class UnconfirmedOnce(Swarm):
    """A Swarm whose first create and first service update succeed in the engine but report a lost
    leader to the caller."""

    creates = 0
    updates = 0

    def create_secret(self, name: str, value: SecretValue, labels: Any) -> str:
        secret_id = super().create_secret(name, value, labels)
        self.creates += 1
        if self.creates == 1:
            raise SwarmNoLeader(f"creating secret {name}: the swarm has no leader right now ({LOST})")
        return secret_id

    def write_service_secrets(self, raw: RawService, secrets: list[dict[str, Any]]) -> None:
        super().write_service_secrets(raw, secrets)
        self.updates += 1
        if self.updates == 1:
            raise SwarmNoLeader(f"updating service: the swarm has no leader right now ({LOST})")


def test_unconfirmed_create_and_update_are_observed_not_repeated(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reconciler.audit")
    pw, token = lab.name("pw"), lab.name("token")
    svc = lab.create_service("app")
    lab.manifest({pw: {"source": {"env": "PW"}, "services": [svc]}, token: {"source": {"env": "TK"}}})
    loaded = converge.load([lab.root], environ={"PW": "one", "TK": "t"})
    with UnconfirmedOnce.connect(lab.docker_host) as swarm:
        assert isinstance(swarm, UnconfirmedOnce)
        settings = converge.Settings(apply=ApplyOptions(timeout=60))
        prepared = converge.prepare(loaded, swarm, settings)
        assert len(prepared.plan.creates) == 2
        result = executor.execute(
            prepared.plan,
            loaded.values,
            swarm,
            live=prepared.live,
            replan=converge.replanner(prepared, swarm, settings),
            options=settings.apply,
        )
        assert result.ok, result
        # the first create landed although it "failed": observed and reused, never made again
        assert lab.secret_names() == {f"{pw}_v1", f"{token}_v1"}
        assert swarm.creates == 2
        # the update landed although it "failed": its rollout was watched, and not written twice
        assert swarm.updates == 1
        (rollout,) = result.rollouts
        assert rollout.outcome == "converged", rollout
        assert lab.service_secret_names(svc) == {pw: f"{pw}_v1"}
        assert converge.prepare(loaded, swarm).plan.empty
    assert lab.read_in_task(svc, f"/run/secrets/{pw}")[0] == b"one"
    # the audit trail says what may have happened, and what did
    events = [(r.getMessage(), getattr(r, "confirmed", True)) for r in caplog.records]
    assert ("secret_create_unconfirmed", True) in events
    assert ("service_updated", False) in events
