"""An in-memory ``docker stack deploy`` for executor unit tests, writing to a :class:`FakeSwarm`.

It does what the real CLI does with a stack's compose files and the override (``core/stacks.py``):
each compose service becomes ``<stack>_<service>`` with the stack's label, the override's labels
and its secrets (a pinned compose secret references the version the override names; any other is
the stack's own ``<stack>_<key>``, created with fake content when missing), and the compose content
(its digest, standing in for everything else a compose file says) in the task template, so a content
change replaces tasks as on the engine. The real CLI is tested against the real engine
(``tests/integration/test_stacks.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.core.model import SecretValue
from reconciler.core.stacks import STACK_NAMESPACE_LABEL, StackSpec
from reconciler.engine.stackdeploy import DeployReport
from reconciler.errors import SwarmSecretsError

from .swarm import FakeSwarm


class FakeStackDeployer:
    def __init__(self, swarm: FakeSwarm, *, fail: bool = False) -> None:
        self.swarm = swarm
        self.fail = fail
        self.deploys: list[tuple[str, dict[str, Any]]] = []
        """(stack, override) of every deploy, in order."""

    def deploy(
        self, stack: StackSpec, override: Mapping[str, Any], *, timeout: float = 600.0
    ) -> DeployReport:
        self.deploys.append((stack.name, dict(override)))
        if self.fail:
            raise SwarmSecretsError(f"docker stack deploy of stack '{stack.name}' failed (exit 1)")
        pinned = {k: v["name"] if isinstance(v.get("external"), bool) else v["external"]["name"]
                  for k, v in (override.get("secrets") or {}).items()}  # fmt: skip
        shown = []
        for service in stack.compose.services:
            labels = dict(
                ((override.get("services") or {}).get(service.name) or {}).get("deploy", {}).get("labels")
                or {}
            )
            labels[STACK_NAMESPACE_LABEL] = stack.name
            refs = []
            for use in (u for u in stack.compose.uses if u.service == service.name):
                name = pinned.get(use.key) or f"{stack.name}_{use.key}"
                if name not in self.swarm.secret_names():
                    self.swarm.create_secret(
                        name, SecretValue(b"from the compose file"), {STACK_NAMESPACE_LABEL: stack.name}
                    )
                refs.append(self.swarm.ref(name, use.target, use.uid, use.gid, use.mode))
            spec = {
                "Name": stack.service(service.name),
                "Labels": labels,
                "TaskTemplate": {
                    "ContainerSpec": {
                        "Image": "local/busybox:1",
                        "Env": [f"CONTENT={stack.content}"],
                        "Secrets": refs,
                    },
                    "ForceUpdate": 0,
                },
                "Mode": {"Replicated": {"Replicas": 1}},
                "UpdateConfig": {"Parallelism": 1, "FailureAction": "pause", "Order": "start-first"},
            }
            self.swarm.put_service(spec)
            shown.append(f"Updating service {stack.service(service.name)}")
        return DeployReport(shown=tuple(shown))
