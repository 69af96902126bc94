"""The operator's policy as values, and how a rule matches: which sets, services, targets and variables.

A :class:`Policy` (loaded from ``--policy FILE`` by ``manifests/policy.py``) is a list of
:class:`Rule`\\ s. The **first rule whose** ``sets`` **globs match a set's name governs that set**;
a set no rule matches may do nothing (deny by default). A rule says what its sets may reach:

* ``services``: service-name globs the sets may grant to;
* ``stacks``: stack namespaces (``com.docker.stack.namespace``) whose services they may grant to;
* ``targets``: in-container paths (globs, matched after normalising; default ``/run/secrets/*``);
* ``env``: variables an ``env:`` source may read (globs);
* ``adopt``: whether a grant may replace a secret the set does not own at its target (migration);
* ``deploy``: stacks (name globs) that ``kind: Stack`` manifests may deploy; the first rule whose
  ``deploy`` matches a stack's name governs its Stack manifest (its ``files`` apply to it too);
* ``files``: optionally, manifest files (globs relative to the source root) the sets must live in,
  so that a set name cannot be claimed from a folder its team does not own.

Globs are shell-style (``*``, ``?``, ``[abc]``), case-sensitive, and ``*`` also matches ``/``.

Pure: values and matching only; no I/O (loading is ``manifests/policy.py``, the checks are
``guard.py``).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_TARGETS = ("/run/secrets/*",)
"""Targets a rule allows when it lists none: the folder Swarm gives secrets, where nothing else lives."""

_GLOB_CHARS = re.compile(r"[*?\[]")


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def glob_match(name: str, patterns: Iterable[str]) -> str | None:
    """The first pattern ``name`` matches (case-sensitively; ``*`` matches ``/`` too), or None."""
    for pattern in patterns:
        if _compiled(pattern).match(name):
            return pattern
    return None


def is_exact(pattern: str) -> bool:
    """True when ``pattern`` has no glob characters: it names one thing."""
    return _GLOB_CHARS.search(pattern) is None


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One rule of the policy; see the module docstring for the fields."""

    number: int
    """1-based position in ``spec.rules``."""
    file: str
    """The policy file as shown to the user."""
    line: int | None
    """Line of the rule in the policy file."""
    sets: tuple[str, ...]
    services: tuple[str, ...] = ()
    stacks: tuple[str, ...] = ()
    targets: tuple[str, ...] = DEFAULT_TARGETS
    env: tuple[str, ...] = ()
    adopt: bool = False
    files: tuple[str, ...] | None = None
    """None: any manifest file."""
    deploy: tuple[str, ...] = ()
    """Stack-name globs ``kind: Stack`` manifests may deploy."""

    @property
    def where(self) -> str:
        """``policy rule 2 (ops/policy.yaml:14)``."""
        place = f"{self.file}:{self.line}" if self.line else self.file
        return f"policy rule {self.number} ({place})"

    def allows_service_name(self, service: str) -> str | None:
        """The ``services`` glob that allows ``service`` by its name, or None."""
        return glob_match(service, self.services)

    def names_exactly(self, service: str) -> bool:
        """True when ``services`` lists ``service`` by its exact name (not through a glob)."""
        return any(is_exact(p) and p == service for p in self.services)

    def stack_prefix(self, service: str) -> str | None:
        """An allowed stack whose services are named like ``service`` (``<stack>_<name>``), or None.

        Only a hint that needs the swarm to confirm: a hand-made ``shop_x`` is not in stack ``shop``.
        """
        return next((s for s in self.stacks if service.startswith(f"{s}_")), None)

    def services_text(self) -> str:
        """What this rule lets its sets grant to, for messages: ``services shop_*; stacks shop``."""
        parts = []
        if self.services:
            parts.append("services " + ", ".join(self.services))
        if self.stacks:
            parts.append("services of stacks " + ", ".join(self.stacks))
        return "; ".join(parts) or "no service"


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """The operator's rules, in order; see the module docstring."""

    file: str
    """The policy file as shown to the user."""
    rules: tuple[Rule, ...] = ()
    sops_env: tuple[str, ...] = ()
    """Globs of extra variables the sops process may see (cloud KMS, Vault): ``spec.sops.env``."""

    def rule_for(self, set_name: str) -> Rule | None:
        """The rule governing ``set_name``: the first whose ``sets`` globs match it."""
        return next((r for r in self.rules if glob_match(set_name, r.sets)), None)

    def rule_for_stack(self, stack: str) -> Rule | None:
        """The rule governing a Stack manifest of ``stack``: the first whose ``deploy`` globs match it."""
        return next((r for r in self.rules if glob_match(stack, r.deploy)), None)

    def deploy_text(self) -> str:
        """Every ``deploy`` glob of every rule, for "no rule allows" messages."""
        globs = [g for r in self.rules for g in r.deploy]
        return ", ".join(dict.fromkeys(globs)) or "none"

    def sets_text(self) -> str:
        """Every set glob of every rule, for "no rule matches" messages."""
        globs = [g for r in self.rules for g in r.sets]
        return ", ".join(dict.fromkeys(globs)) or "none (the policy has no rules)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Governance:
    """Which policy rule governs a set (shown by plan and status)."""

    set_name: str
    rule: int | None
    """1-based rule number; None when no rule matches (the set is denied)."""
    where: str
    """``policy rule 2 (policy.yaml:14)``, or why none does."""
