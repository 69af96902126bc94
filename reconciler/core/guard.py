"""The trust boundary: what a manifest may ask for, checked before any value is read or anything changes.

Whoever can merge a manifest is not trusted with the reconciler's own keys, nor with every service
on the swarm. The operator sets the boundary (:class:`Boundary`: the policy file and flags); these
checks hold manifests to it and to rules that apply whatever the policy says:

**Always** (policy or not):

* an ``env:`` source may not read a variable of the tool's own configuration or a credential of
  the programs it runs (:data:`RESERVED_ENV`), unless the governing policy rule names it exactly;
  in ``run`` (``Boundary.daemon``) an ``env:`` source needs a policy rule that allows the variable;
* no grant to the reconciler's own service (``--self-service``, or a service labelled
  ``io.swarm-secrets.role=reconciler``), not even through a policy;
* no grant to a service that can reach the engine (it mounts the Docker socket or the engine's
  state, or has ``DOCKER_HOST`` set): that is root on a node; only a policy rule that names the
  service exactly allows it (:func:`engine_access`);
* no target in the system paths where programs, libraries and kernel interfaces live
  (:func:`system_target`), and no mode with execute bits: a secret is data, never a program;
* a grant to a service that does not exist is an error unless the grant says ``optional: true``,
  or a stack this run deploys creates it.

**Stacks** (``kind: Stack`` manifests, :func:`check_stacks`): deploying one runs any image with any
mount it names, so with a policy only a rule's ``deploy`` allows it, and in ``run`` a policy is
needed at all; a stack with a service that can reach the engine needs a rule naming it exactly; no
stack may deploy the reconciler's own service.

**With a policy**, every set needs a rule (deny by default) and stays inside it: services, stacks,
targets, variables, adopting secrets it does not own, manifest files (see ``policy.py``).

Two entry points: :func:`check_sets` needs only the manifests (``validate --offline`` runs it) and
:func:`check_live` the observed swarm (plan, apply, run), run before planning. Each returns every
problem found, one line each (manifest file:line, manifest path, what is wrong, the rule, what
would be allowed); :func:`enforce_sets` and :func:`enforce_live` raise them as one
:class:`~reconciler.errors.PolicyViolation`. :func:`governance` says which rule governs each set.

Pure: no I/O, no docker; works on manifests, the policy and the live state as values.
"""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.model import (
    LABEL_PREFIX,
    SECRETS_DIR,
    EnvSource,
    GenerateSource,
    LiveService,
    LiveState,
    Origin,
    Rotation,
    SecretSet,
    SecretSpec,
    ServiceGrant,
)
from reconciler.core.policy import Governance, Policy, Rule, glob_match, is_exact
from reconciler.core.stacks import STACK_ENV_DENIED, StackSpec
from reconciler.errors import PolicyViolation, Problem

ROLE_LABEL = LABEL_PREFIX + "role"
"""Service label; ``reconciler`` marks the reconciler's own service (deploy/stack.yml sets it)."""

RESERVED_ENV: tuple[str, ...] = (
    # this tool and the engine client it uses
    "SWARM_SECRETS_*", "DOCKER_*",
    # sops and the keys it decrypts with (age, PGP, cloud KMS, Vault)
    "SOPS_*", "GNUPGHOME", "GPG_*", "AWS_*", "AZURE_*", "ARM_*", "GOOGLE_*", "GCLOUD_*", "CLOUDSDK_*",
    "GCP_*", "VAULT_*", "HUAWEICLOUD_*",
    # git and ssh, which fetch the manifests
    "GIT_*", "SSH_*",
    # proxies (may carry user:password) and CI credentials in the job that runs `apply`
    "*_PROXY", "*_proxy", "GITHUB_TOKEN", "GH_TOKEN", "ACTIONS_*", "CI_JOB_*", "CI_REGISTRY_PASSWORD",
    "CI_DEPLOY_PASSWORD", "GITLAB_TOKEN",
)  # fmt: skip
"""Variables an ``env:`` source may not read: the tool's own configuration and the credentials of
the programs it runs. A policy rule can still allow one by naming it exactly (no glob)."""

SYSTEM_TREES: tuple[str, ...] = (
    "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr", "/boot", "/dev", "/proc", "/sys",
    "/etc/ld.so.preload", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/ld.so.cache", "/etc/passwd",
    "/etc/shadow", "/etc/group", "/etc/gshadow", "/etc/sudoers", "/etc/sudoers.d", "/etc/profile",
    "/etc/profile.d", "/etc/environment", "/etc/bash.bashrc", "/etc/crontab", "/etc/cron.d",
    "/etc/init.d", "/etc/systemd", "/etc/pam.d", "/etc/security", "/etc/nsswitch.conf", "/etc/hosts",
    "/etc/hostname", "/etc/resolv.conf", "/var/run/docker.sock", "/run/docker.sock",
)  # fmt: skip
"""Paths (and everything below them) a target may never be: programs, libraries, the loader's and
the login's configuration, kernel interfaces, files Docker manages, the engine socket, and the
secrets folder itself. Files directly in ``/`` are refused too (``/entrypoint.sh``)."""

ENGINE_PATHS: tuple[str, ...] = (
    "/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock", "/run/podman/podman.sock", "/var/lib/docker/swarm",
    "/etc/docker", "/root/.docker",
)  # fmt: skip
"""Host paths that give control of the engine or the swarm (sockets, the swarm's keys, client
certificates): a bind mount of one of them, or of a folder above one, reaches the engine."""
SOCKET_NAMES = frozenset({"docker.sock", "containerd.sock", "podman.sock", "dockershim.sock"})
"""Socket file names that reach an engine wherever they are mounted from."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Boundary:
    """What the operator allows manifest authors: the policy and the settings the checks need."""

    policy: Policy | None = None
    """``--policy``: None means no policy (only the rules that always apply)."""
    self_service: str | None = None
    """``--self-service``: the reconciler's own service, never granted anything."""
    source_root: Path | None = None
    """``--source-root``: where ``file``/``sops.file`` sources must resolve; None: the git work tree
    holding the manifests, else the folder given."""
    daemon: bool = False
    """True in ``run``: the process environment is the reconciler's own, so ``env:`` sources need a
    policy rule."""
    sops_env: tuple[str, ...] = ()
    """``--sops-env``: globs of extra variables the sops process may see (cloud KMS, Vault)."""
    min_rotation: Rotation | None = None
    """``--min-rotation-period``: the shortest ``rotate.every`` a generated secret may have (each
    rotation restarts every service using it; a manifest author must not be able to set off a restart
    loop). None: no floor (the CLI's default is one hour)."""

    def rule_for(self, set_name: str) -> Rule | None:
        return self.policy.rule_for(set_name) if self.policy is not None else None

    @property
    def sops_passthrough(self) -> tuple[str, ...]:
        """Extra variable globs for sops: the flag's and the policy's."""
        return (*self.sops_env, *(self.policy.sops_env if self.policy is not None else ()))


# --- the rules that need no policy ---------------------------------------------------------------------


def reserved_env(name: str) -> str | None:
    """The :data:`RESERVED_ENV` pattern ``name`` falls under, or None."""
    return glob_match(name, RESERVED_ENV)


@functools.lru_cache(maxsize=65536)
def system_target(path: str) -> str | None:
    """Why the normalised in-container ``path`` may not be a target, or None when it may."""
    if posixpath.dirname(path) == "/":
        return "a file directly in / (where entrypoints live)"
    if path == SECRETS_DIR:
        return "the secrets folder itself"
    for tree in SYSTEM_TREES:
        if path == tree or path.startswith(tree + "/"):
            return f"inside {tree}" if path != tree else f"{tree} itself"
    return None


def engine_access(service: LiveService) -> str | None:
    """How ``service`` can reach the engine (and so is root on a node), or None.

    A bind mount of an engine socket (any ``docker.sock``), of the swarm's state or the engine's
    client certificates, or of a folder above one of them (``/var/run``, ``/``); a named pipe of the
    engine; or a ``DOCKER_HOST`` variable (an engine over TCP or ssh).
    """
    return engine_reach(service.binds, service.env_names)


def engine_reach(binds: Iterable[str], env_names: Iterable[str]) -> str | None:
    """:func:`engine_access` for host paths and variable names (a live service's, or a compose one's)."""
    for source in binds:
        path = posixpath.normpath(source) if source.startswith("/") else source
        name = path.replace("\\", "/").rsplit("/", 1)[-1]
        if name in SOCKET_NAMES or "docker_engine" in name:
            return f"mounts the engine socket {source}"
        for sensitive in ENGINE_PATHS:
            if path == sensitive:
                return f"mounts {source}"
            if sensitive.startswith(path.rstrip("/") + "/"):
                return f"mounts {source}, which holds {sensitive}"
    if "DOCKER_HOST" in env_names:
        return "has DOCKER_HOST set, so it talks to an engine"
    return None


def is_reconciler(service: LiveService, boundary: Boundary) -> bool:
    return service.name == boundary.self_service or service.labels.get(ROLE_LABEL) == "reconciler"


# --- offline: the manifests alone ------------------------------------------------------------------------


def governance(sets: Sequence[SecretSet], policy: Policy | None) -> tuple[Governance, ...]:
    """The rule governing each set, in set order; empty without a policy."""
    if policy is None:
        return ()
    result = []
    for secret_set in sets:
        rule = policy.rule_for(secret_set.name)
        if rule is None:
            result.append(Governance(set_name=secret_set.name, rule=None, where="no rule matches: denied"))
        else:
            result.append(Governance(set_name=secret_set.name, rule=rule.number, where=rule.where))
    return tuple(result)


def check_sets(sets: Sequence[SecretSet], boundary: Boundary) -> list[Problem]:
    """Every problem the manifests show on their own, without reading a value or the swarm."""
    problems: list[Problem] = []
    for secret_set in sets:
        problems += _check_set(secret_set, boundary)
    return problems


def enforce_sets(sets: Sequence[SecretSet], boundary: Boundary) -> None:
    """:func:`check_sets`, raised as one :class:`PolicyViolation` when anything is found."""
    problems = check_sets(sets, boundary)
    if problems:
        raise PolicyViolation(problems)


def _check_set(secret_set: SecretSet, boundary: Boundary) -> Iterator[Problem]:
    policy = boundary.policy
    rule = boundary.rule_for(secret_set.name)
    if policy is not None and rule is None:
        yield _problem(
            secret_set.origin,
            f"set '{secret_set.name}' matches no rule of the policy {policy.file}, so it may do nothing; "
            f"the policy has rules for sets {policy.sets_text()}: rename the set or ask the operator "
            "for a rule",
        )
        return
    if rule is not None and rule.files is not None and not glob_match(secret_set.location, rule.files):
        declared = secret_set.location or "a file outside the source root"
        yield _problem(
            secret_set.origin,
            f"set '{secret_set.name}' is declared in {declared}, but {rule.where} allows it only in "
            f"{', '.join(rule.files)}: move the manifest there",
        )
    for spec in secret_set.secrets:
        if isinstance(spec.source, EnvSource):
            yield from _check_env(spec, spec.source, rule, boundary)
        rotate = spec.rotate
        floor = boundary.min_rotation
        generated = isinstance(spec.source, GenerateSource)
        if generated and rotate is not None and floor is not None and rotate.every < floor.every:
            yield _problem(
                _field(spec, "rotate.every"),
                f"rotate.every {rotate.text} is shorter than {floor.text}, the shortest rotation period the "
                "operator allows (--min-rotation-period): every rotation restarts the services that use "
                "the secret; use a longer period",
            )
        for index, grant in enumerate(spec.grants):
            yield from _check_grant(spec, index, grant, rule, boundary)


def _check_env(
    spec: SecretSpec, source: EnvSource, rule: Rule | None, boundary: Boundary
) -> Iterator[Problem]:
    origin = source.origin or _field(spec, "source.env")
    var = source.var
    reserved = reserved_env(var)
    if reserved is not None:
        if rule is not None and var in rule.env:
            return  # the operator named it exactly: a deliberate choice
        allowed = f"; {rule.where} allows {_list(rule.env, 'no variable')}" if rule is not None else ""
        yield _problem(
            origin,
            f"environment variable {var} belongs to the reconciler's own configuration or credentials "
            f"({reserved}) and is never a source{allowed}: give the value another way (a sops file)",
        )
        return
    if rule is not None:
        if glob_match(var, rule.env) is None:
            yield _problem(
                origin,
                f"environment variable {var} is not allowed for set '{spec.set_name}': {rule.where} "
                f"allows {_list(rule.env, 'no variable')}",
            )
    elif boundary.daemon:
        yield _problem(
            origin,
            f"env sources are refused in `run` without a policy (the loop's environment holds the "
            f"reconciler's own credentials): use a sops file, or have the operator allow {var} in a "
            "policy rule's env",
        )


def _check_grant(
    spec: SecretSpec, index: int, grant: ServiceGrant, rule: Rule | None, boundary: Boundary
) -> Iterator[Problem]:
    origin = grant.origin or _field(spec, f"services[{index}]")
    if grant.service == boundary.self_service:
        yield _problem(
            origin,
            f"service '{grant.service}' is the reconciler itself (--self-service): it is never granted "
            "a managed secret (its own keys are bootstrapped by hand): remove this grant",
        )
        return
    path = grant.path
    line, at = origin.at("target")
    why = system_target(path)
    if why is not None:
        yield Problem(
            origin.file,
            line,
            at,
            f"target {path} is {why}, where a secret would replace programs or system files: "
            "use a path under /run/secrets (a relative target) or an application folder",
        )
    elif rule is not None and glob_match(path, rule.targets) is None:
        yield Problem(
            origin.file,
            line,
            at,
            f"target {path} is not allowed for set '{spec.set_name}': {rule.where} allows targets "
            f"{', '.join(rule.targets)}",
        )
    if grant.mode & 0o111:
        line, at = origin.at("mode")
        yield Problem(
            origin.file,
            line,
            at,
            f"mode {grant.mode:04o} has execute bits: a secret is data, never a program; use a mode "
            f"without them, such as {grant.mode & 0o666:04o}",
        )
    if rule is not None and rule.allows_service_name(grant.service) is None:
        if rule.stack_prefix(grant.service) is None:
            line, at = origin.at("service")
            yield Problem(
                origin.file,
                line,
                at,
                f"service '{grant.service}' is not allowed for set '{spec.set_name}': {rule.where} "
                f"allows {rule.services_text()}",
            )
        # else: a service of an allowed stack by its name; check_live confirms the stack label.


# --- live: against the observed swarm ----------------------------------------------------------------


def check_live(
    sets: Sequence[SecretSet], live: LiveState, boundary: Boundary, stacks: Sequence[StackSpec] = ()
) -> list[Problem]:
    """Every problem that needs the swarm: missing services (a service a stack of this run deploys is
    not missing: the deploy creates it), the reconciler's own and engine-holding services, stack
    membership, replacing secrets a set does not own (``adopt``), and stacks that would redeploy the
    reconciler."""
    services = {s.name: s for s in live.services}
    deployed = frozenset(name for stack in stacks for name in stack.swarm_services)
    # Who owns each secret matters only under a rule without `adopt`: built when one is met.
    owners: dict[str, tuple[str | None, str | None] | None] | None = None
    names: dict[str, str] = {}
    problems: list[Problem] = []
    for secret_set in sets:
        rule = boundary.rule_for(secret_set.name)
        if boundary.policy is not None and rule is None:
            continue  # reported by check_sets; nothing else matters for a denied set
        if owners is None and rule is not None and not rule.adopt:
            owners = {s.id: (s.set_name, s.secret) if s.managed else None for s in live.secrets}
            names = {s.id: s.name for s in live.secrets}
        for spec in secret_set.secrets:
            for index, grant in enumerate(spec.grants):
                origin = grant.origin or _field(spec, f"services[{index}]")
                service = services.get(grant.service)
                if service is None:
                    if not grant.optional and grant.service not in deployed:
                        problems.append(_missing(origin, grant, services))
                    continue
                problems += _check_service(spec, grant, service, origin, rule, boundary)
                if rule is not None and not rule.adopt and owners is not None:
                    problems += _check_adopt(spec, grant, service, origin, rule, owners, names)
    for stack in stacks:
        for service in live.services:
            if service.stack == stack.name and is_reconciler(service, boundary):
                problems.append(
                    _stack_problem(
                        stack,
                        f"stack '{stack.name}' holds the reconciler's own "
                        f"service '{service.name}': a Stack manifest may never redeploy the reconciler",
                    )
                )
    return problems


def enforce_live(
    sets: Sequence[SecretSet], live: LiveState, boundary: Boundary, stacks: Sequence[StackSpec] = ()
) -> None:
    """:func:`check_live`, raised as one :class:`PolicyViolation` when anything is found."""
    problems = check_live(sets, live, boundary, stacks)
    if problems:
        raise PolicyViolation(problems)


def _missing(origin: Origin, grant: ServiceGrant, services: dict[str, LiveService]) -> Problem:
    import difflib

    guess = difflib.get_close_matches(grant.service, list(services), n=1, cutoff=0.8)
    hint = f" (did you mean '{guess[0]}'?)" if guess else ""
    line, at = origin.at("service")
    return Problem(
        origin.file,
        line,
        at,
        f"service '{grant.service}' does not exist{hint}: fix the name, or if it is deployed later, write "
        "the grant as a mapping with `optional: true`; nothing was changed",
    )


def _check_service(
    spec: SecretSpec,
    grant: ServiceGrant,
    service: LiveService,
    origin: Origin,
    rule: Rule | None,
    boundary: Boundary,
) -> Iterator[Problem]:
    if is_reconciler(service, boundary):
        yield Problem(
            origin.file,
            *origin.at("service"),
            f"service '{service.name}' is the reconciler itself (label {ROLE_LABEL}=reconciler or "
            "--self-service): it is never granted a managed secret: remove this grant",
        )
        return
    access = engine_access(service)
    if access is not None and not (rule is not None and rule.names_exactly(service.name)):
        named = (
            f"{rule.where} does not name '{service.name}' exactly"
            if rule is not None
            else "without a policy rule that names it exactly"
        )
        yield Problem(
            origin.file,
            *origin.at("service"),
            f"service '{service.name}' {access}, which is root on its node; a manifest may not write "
            f"files into it ({named}): remove this grant or ask the operator",
        )
        return
    if rule is not None and rule.allows_service_name(service.name) is None:
        if service.stack is None or service.stack not in rule.stacks:
            stack = f"stack '{service.stack}'" if service.stack else "no stack"
            yield Problem(
                origin.file,
                *origin.at("service"),
                f"service '{service.name}' ({stack}) is not allowed for set '{spec.set_name}': "
                f"{rule.where} allows {rule.services_text()}",
            )


def _check_adopt(
    spec: SecretSpec,
    grant: ServiceGrant,
    service: LiveService,
    origin: Origin,
    rule: Rule,
    owners: dict[str, tuple[str | None, str | None] | None],
    names: dict[str, str],
) -> Iterator[Problem]:
    for ref in service.refs:
        if ref.path != grant.path:
            continue
        owner = owners.get(ref.secret_id, None)
        if owner == (spec.set_name, spec.secret) or ref.secret_id not in owners:
            continue  # its own version, or a reference to a secret that is gone (nothing to take over)
        what = (
            f"the hand-made secret '{names[ref.secret_id]}'"
            if owner is None or owner[0] is None
            else f"'{names[ref.secret_id]}' of set '{owner[0]}'"
        )
        line, at = origin.at("target")
        yield Problem(
            origin.file,
            line,
            at,
            f"service '{service.name}' already mounts {what} at {grant.path}; replacing a secret the set "
            f"does not own needs `adopt: true`, which {rule.where} does not give: choose another target "
            "or ask the operator",
        )
        return


# --- stacks: what a Stack manifest may deploy ----------------------------------------------------------


def check_stacks(stacks: Sequence[StackSpec], boundary: Boundary) -> list[Problem]:
    """Every problem the Stack manifests show against the boundary, without the swarm.

    Deploying a stack runs any image with any mount and capability its compose files name, so: with a
    policy, only a rule whose ``deploy`` matches the stack allows it (and that rule's ``files``
    apply); in ``run`` without a policy nothing allows it (the loop holds the swarm's keys); a
    service that can reach the engine needs a rule naming the stack exactly; no service of the stack
    may be the reconciler's own. Stacks of ``stack deploy`` (the operator's command) are not held to
    this.
    """
    problems: list[Problem] = []
    policy = boundary.policy
    for stack in stacks:
        if stack.origin is None:
            continue  # `swarm-secrets stack deploy`: the operator names the files
        rule = policy.rule_for_stack(stack.name) if policy is not None else None
        if policy is not None and rule is None:
            problems.append(
                _stack_problem(
                    stack,
                    f"stack '{stack.name}' may not be deployed by a manifest: no rule of the policy "
                    f"{policy.file} allows it in `deploy` (rules allow {policy.deploy_text()}); deploying "
                    "a stack runs any image with any mount it names: ask the operator for a rule",
                )
            )
            continue
        if policy is None and boundary.daemon:
            problems.append(
                _stack_problem(
                    stack,
                    f"Stack manifests are refused in `run` without a policy: deploying stack '{stack.name}' "
                    "would run any image with any mount its compose files name; have the operator allow "
                    f"it in a policy rule's `deploy` (`deploy: [{stack.name}]`)",
                )
            )
            continue
        for variable in sorted(stack.environment):
            denied = reserved_env(variable) or glob_match(variable, STACK_ENV_DENIED)
            if denied is not None:
                problems.append(
                    _stack_problem(
                        stack,
                        f"spec.env.{variable}: {variable} ({denied}) configures the programs the reconciler "
                        "runs (docker gets these variables), not a compose file: use another name",
                    )
                )
        if rule is not None and rule.files is not None and not glob_match(stack.location, rule.files):
            declared = stack.location or "a file outside the source root"
            problems.append(
                _stack_problem(
                    stack,
                    f"stack '{stack.name}' is declared in {declared}, but {rule.where} allows it only in "
                    f"{', '.join(rule.files)}: move the manifest there",
                )
            )
        for service in stack.compose.services:
            name = stack.service(service.name)
            if name == boundary.self_service:
                problems.append(
                    _problem(
                        service.origin,
                        f"service '{name}' is the reconciler itself (--self-service): a Stack manifest may "
                        "never deploy it",
                    )
                )
                continue
            reach = engine_reach(service.binds, service.env_names)
            exact = rule is not None and any(is_exact(g) and g == stack.name for g in rule.deploy)
            if reach is not None and not exact:
                named = (
                    f"{rule.where} does not name stack '{stack.name}' exactly in `deploy`"
                    if rule is not None
                    else "without a policy rule that names the stack exactly in `deploy`"
                )
                problems.append(
                    _problem(
                        service.origin,
                        f"service '{name}' {reach}, which is root on its node; a Stack manifest may not "
                        f"deploy it ({named}): remove it from the compose files or ask the operator",
                    )
                )
    return problems


def _stack_problem(stack: StackSpec, message: str) -> Problem:
    origin = stack.origin
    if origin is None:
        return Problem("", None, "", message)
    return _problem(origin, message)


# --- helpers -------------------------------------------------------------------------------------------


def _field(spec: SecretSpec, suffix: str) -> Origin:
    return Origin(file=spec.origin.file, line=spec.origin.line, path=f"{spec.origin.path}.{suffix}")


def _problem(origin: Origin, message: str) -> Problem:
    return Problem(origin.file, origin.line, origin.path, message)


def _list(items: Iterable[str], none: str) -> str:
    text = ", ".join(items)
    return text or none


__all__ = [
    "ENGINE_PATHS",
    "RESERVED_ENV",
    "ROLE_LABEL",
    "SYSTEM_TREES",
    "Boundary",
    "Governance",
    "check_live",
    "check_sets",
    "check_stacks",
    "engine_access",
    "engine_reach",
    "enforce_live",
    "enforce_sets",
    "governance",
    "reserved_env",
    "system_target",
]
