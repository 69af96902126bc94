"""The trust boundary's rules on plain data (``core/guard.py``, ``core/policy.py``): each rule, what it
refuses, what it still allows, and that every refusal is one line naming the manifest line, the
manifest path, the rule and what would be allowed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from reconciler.core.guard import (
    Boundary,
    check_live,
    check_sets,
    enforce_live,
    engine_access,
    governance,
    reserved_env,
    system_target,
)
from reconciler.core.model import (
    EnvSource,
    FileSource,
    LiveSecret,
    LiveService,
    LiveState,
    Origin,
    SecretRef,
    SecretSet,
    SecretSpec,
    ServiceGrant,
    Source,
)
from reconciler.core.policy import Policy, Rule
from reconciler.errors import ConfigError, PolicyViolation, Problem

FILE = "teams/shop/set.yaml"


def grant(
    service: str, target: str = "pw", *, mode: int = 0o444, optional: bool = False, line: int = 20
) -> ServiceGrant:
    origin = Origin(
        file=FILE,
        line=line,
        path="spec.secrets.pw.services[0]",
        fields={"target": line + 1, "mode": line + 2},
    )
    return ServiceGrant(service=service, target=target, mode=mode, optional=optional, origin=origin)


def secret_set(
    *grants: ServiceGrant,
    name: str = "shop",
    source: Source | None = None,
    location: str = "teams/shop/set.yaml",
) -> SecretSet:
    spec = SecretSpec(
        set_name=name,
        secret="pw",
        source=source or FileSource(file=Path("/repo/pw.txt")),
        grants=grants,
        origin=Origin(file=FILE, line=10, path="spec.secrets.pw"),
    )
    return SecretSet(
        name=name, secrets=(spec,), origin=Origin(file=FILE, line=4, path="metadata.name"), location=location
    )


def env(var: str) -> EnvSource:
    return EnvSource(var=var, origin=Origin(file=FILE, line=12, path="spec.secrets.pw.source.env"))


def rule(number: int = 1, **fields: object) -> Rule:
    base: dict[str, object] = {
        "number": number,
        "file": "ops/policy.yaml",
        "line": 5 + 10 * number,
        "sets": ("shop",),
    }
    base.update(fields)
    return Rule(**base)  # type: ignore[arg-type]


def policy(*rules: Rule) -> Policy:
    return Policy(file="ops/policy.yaml", rules=rules)


def service(name: str, **fields: object) -> LiveService:
    return LiveService(id=f"id-{name}", name=name, version=1, **fields)  # type: ignore[arg-type]


def lines(problems: Sequence[Problem]) -> list[str]:
    rendered = [str(p) for p in problems]
    assert all("\n" not in line for line in rendered)
    return rendered


# --- rules that apply without a policy -------------------------------------------------------------


@pytest.mark.parametrize(
    "var",
    [
        "SOPS_AGE_KEY", "SOPS_AGE_KEY_FILE", "SWARM_SECRETS_WEBHOOK_SECRET_FILE", "GIT_SSH_COMMAND",
        "GIT_CONFIG_VALUE_0", "SSH_AUTH_SOCK", "DOCKER_HOST", "DOCKER_CERT_PATH", "GNUPGHOME",
        "AWS_SECRET_ACCESS_KEY", "AZURE_CLIENT_SECRET", "GOOGLE_APPLICATION_CREDENTIALS", "VAULT_TOKEN",
        "HTTPS_PROXY", "https_proxy", "GITHUB_TOKEN", "CI_JOB_TOKEN", "ACTIONS_RUNTIME_TOKEN",
    ],
)  # fmt: skip
def test_reserved_variables_are_never_a_source(var: str) -> None:
    assert reserved_env(var) is not None
    [line] = lines(check_sets([secret_set(source=env(var))], Boundary()))
    assert line.startswith(f"{FILE}:12: spec.secrets.pw.source.env: environment variable {var} belongs to")
    # a policy glob does not open them: only the exact name does
    loose = Boundary(policy=policy(rule(env=("*",))))
    assert len(check_sets([secret_set(source=env(var))], loose)) == 1
    exact = Boundary(policy=policy(rule(env=(var,))))
    assert check_sets([secret_set(source=env(var))], exact) == []


def test_ordinary_variables_pass_without_a_policy_but_not_in_run() -> None:
    assert reserved_env("API_TOKEN") is None
    assert check_sets([secret_set(source=env("API_TOKEN"))], Boundary()) == []
    [line] = lines(check_sets([secret_set(source=env("API_TOKEN"))], Boundary(daemon=True)))
    assert "env sources are refused in `run` without a policy" in line
    allowed = Boundary(daemon=True, policy=policy(rule(env=("API_*",), services=("*",))))
    assert check_sets([secret_set(source=env("API_TOKEN"))], allowed) == []
    [line] = lines(check_sets([secret_set(source=env("SHOP_PW"))], allowed))
    assert line == (
        f"{FILE}:12: spec.secrets.pw.source.env: environment variable SHOP_PW is not allowed for set 'shop': "
        "policy rule 1 (ops/policy.yaml:15) allows API_*"
    )


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/usr/local/bin/docker-entrypoint.sh", "inside /usr"),
        ("/bin/sh", "inside /bin"),
        ("/entrypoint.sh", "a file directly in / (where entrypoints live)"),
        ("../../bin/sh", "inside /bin"),  # relative, climbing out of /run/secrets
        ("/etc/passwd", "/etc/passwd itself"),
        ("/etc/ld.so.preload", "/etc/ld.so.preload itself"),
        ("/lib/x86_64-linux-gnu/libc.so.6", "inside /lib"),
        ("/proc/self/attr", "inside /proc"),
        ("/var/run/docker.sock", "/var/run/docker.sock itself"),
        ("/run/secrets", "the secrets folder itself"),
        ("/run/secrets/../../usr/bin/python3", "inside /usr"),
    ],
)
def test_system_targets_are_refused(target: str, why: str) -> None:
    g = grant("shop_web", target)
    assert system_target(g.path) == why
    [line] = lines(check_sets([secret_set(g)], Boundary()))
    assert line.startswith(f"{FILE}:21: spec.secrets.pw.services[0].target: target {g.path} is {why}")


@pytest.mark.parametrize(
    "target", ["pw", "/run/secrets/pw", "tls/key.pem", "/etc/app/db_pass", "/var/lib/app/k"]
)
def test_ordinary_targets_pass(target: str) -> None:
    assert check_sets([secret_set(grant("shop_web", target))], Boundary()) == []


@pytest.mark.parametrize("mode", [0o755, 0o544, 0o441, 0o777, 0o100])
def test_execute_bits_are_refused(mode: int) -> None:
    [line] = lines(check_sets([secret_set(grant("shop_web", mode=mode))], Boundary()))
    assert line.startswith(f"{FILE}:22: spec.secrets.pw.services[0].mode: mode {mode:04o} has execute bits")
    assert f"such as {mode & 0o666:04o}" in line


def test_the_reconciler_itself_is_never_granted() -> None:
    boundary = Boundary(self_service="ops_reconciler", policy=policy(rule(services=("ops_reconciler",))))
    [line] = lines(check_sets([secret_set(grant("ops_reconciler"))], boundary))
    assert "is the reconciler itself (--self-service)" in line
    live = LiveState(services=(service("ops_x", labels={"io.swarm-secrets.role": "reconciler"}),))
    [line] = lines(check_live([secret_set(grant("ops_x"))], live, Boundary()))
    assert line.startswith(
        f"{FILE}:20: spec.secrets.pw.services[0].service: service 'ops_x' is the reconciler"
    )


@pytest.mark.parametrize(
    ("binds", "env_names", "expected"),
    [
        (("/var/run/docker.sock",), (), "mounts the engine socket /var/run/docker.sock"),
        (("/run/docker.sock",), (), "mounts the engine socket /run/docker.sock"),
        (("/tmp/ss/docker.sock",), (), "mounts the engine socket /tmp/ss/docker.sock"),
        (("/var/run",), (), "mounts /var/run, which holds /var/run/docker.sock"),
        (("/var/run/",), (), "mounts /var/run/, which holds /var/run/docker.sock"),
        (("/",), (), "mounts /, which holds /var/run/docker.sock"),
        (("/var/lib/docker",), (), "mounts /var/lib/docker, which holds /var/lib/docker/swarm"),
        (("/etc/docker",), (), "mounts /etc/docker"),
        (
            ("/run/containerd/containerd.sock",),
            (),
            "mounts the engine socket /run/containerd/containerd.sock",
        ),
        (("\\\\.\\pipe\\docker_engine",), (), "mounts the engine socket \\\\.\\pipe\\docker_engine"),
        ((), ("DOCKER_HOST",), "has DOCKER_HOST set, so it talks to an engine"),
        (("/srv/data", "/var/lib/docker/volumes/x/_data"), ("DB_HOST",), None),
    ],
)
def test_engine_access(binds: tuple[str, ...], env_names: tuple[str, ...], expected: str | None) -> None:
    assert engine_access(service("s", binds=binds, env_names=frozenset(env_names))) == expected


def test_engine_holding_services_need_a_rule_naming_them_exactly() -> None:
    live = LiveState(services=(service("ops_backup", binds=("/var/run/docker.sock",)),))
    sets = [secret_set(grant("ops_backup"))]
    [line] = lines(check_live(sets, live, Boundary()))
    assert line == (
        f"{FILE}:20: spec.secrets.pw.services[0].service: service 'ops_backup' mounts the engine socket "
        "/var/run/docker.sock, which is root on its node; a manifest may not write files into it (without a "
        "policy rule that names it exactly): remove this grant or ask the operator"
    )
    glob = Boundary(policy=policy(rule(services=("ops_*",))))
    [line] = lines(check_live(sets, live, glob))
    assert "policy rule 1 (ops/policy.yaml:15) does not name 'ops_backup' exactly" in line
    exact = Boundary(policy=policy(rule(services=("ops_backup",))))
    assert check_live(sets, live, exact) == []


def test_a_missing_service_is_an_error_unless_optional() -> None:
    live = LiveState(services=(service("payments_api"),))
    [line] = lines(check_live([secret_set(grant("payments_apii"))], live, Boundary()))
    assert line == (
        f"{FILE}:20: spec.secrets.pw.services[0].service: service 'payments_apii' does not exist "
        "(did you mean 'payments_api'?): fix the name, or if it is deployed later, write the grant as a "
        "mapping with `optional: true`; nothing was changed"
    )
    assert check_live([secret_set(grant("payments_later", optional=True))], live, Boundary()) == []
    with pytest.raises(PolicyViolation):
        enforce_live([secret_set(grant("payments_apii"))], live, Boundary())


# --- the policy --------------------------------------------------------------------------------------


def test_a_set_no_rule_covers_may_do_nothing() -> None:
    boundary = Boundary(policy=policy(rule(sets=("pay", "pay-*"))))
    [line] = lines(check_sets([secret_set(grant("shop_web"))], boundary))
    assert line == (
        f"{FILE}:4: metadata.name: set 'shop' matches no rule of the policy ops/policy.yaml, so it may do "
        "nothing; the policy has rules for sets pay, pay-*: rename the set or ask the operator for a rule"
    )
    # and nothing else is reported for it: one line per denied set
    assert check_live([secret_set(grant("missing"))], LiveState(), boundary) == []
    assert len(check_sets([secret_set()], Boundary(policy=policy()))) == 1  # no rules: all denied


def test_first_matching_rule_wins_and_governs() -> None:
    first = rule(1, sets=("shop-*", "shop"), services=("shop_*",))
    second = rule(2, sets=("*",), services=("*",))
    boundary = Boundary(policy=policy(first, second))
    [line] = lines(check_sets([secret_set(grant("pay_api"))], boundary))
    assert line == (
        f"{FILE}:20: spec.secrets.pw.services[0].service: service 'pay_api' is not allowed for set 'shop': "
        "policy rule 1 (ops/policy.yaml:15) allows services shop_*"
    )
    other = secret_set(grant("pay_api"), name="pay")
    assert check_sets([other], boundary) == []
    assert [(g.set_name, g.rule, g.where) for g in governance([secret_set(), other], boundary.policy)] == [
        ("shop", 1, "policy rule 1 (ops/policy.yaml:15)"),
        ("pay", 2, "policy rule 2 (ops/policy.yaml:25)"),
    ]
    assert governance([secret_set()], None) == ()


def test_targets_are_matched_after_normalising() -> None:
    boundary = Boundary(policy=policy(rule(services=("*",), targets=("/run/secrets/*", "/etc/app/*"))))
    for ok in ("pw", "/etc/app/db_pass", "/etc/app/./x"):
        assert check_sets([secret_set(grant("shop_web", ok))], boundary) == [], ok
    [line] = lines(check_sets([secret_set(grant("shop_web", "/etc/app/../other/x"))], boundary))
    assert line == (
        f"{FILE}:21: spec.secrets.pw.services[0].target: target /etc/other/x is not allowed for set 'shop': "
        "policy rule 1 (ops/policy.yaml:15) allows targets /run/secrets/*, /etc/app/*"
    )
    default = Boundary(policy=policy(rule(services=("*",))))  # no targets: /run/secrets/* only
    assert len(check_sets([secret_set(grant("shop_web", "/etc/app/x"))], default)) == 1


def test_stacks_need_the_swarm_to_confirm() -> None:
    boundary = Boundary(policy=policy(rule(stacks=("shop",))))
    sets = [secret_set(grant("shop_web"))]
    assert check_sets(sets, boundary) == []  # named like a service of stack shop: the swarm decides
    [line] = lines(check_sets([secret_set(grant("pay_web"))], boundary))
    assert "allows services of stacks shop" in line
    in_stack = LiveState(services=(service("shop_web", stack="shop"),))
    assert check_live(sets, in_stack, boundary) == []
    hand_made = LiveState(services=(service("shop_web"),))
    [line] = lines(check_live(sets, hand_made, boundary))
    assert "service 'shop_web' (no stack) is not allowed for set 'shop'" in line
    other_stack = LiveState(services=(service("shop_web", stack="shopping"),))
    assert "(stack 'shopping')" in lines(check_live(sets, other_stack, boundary))[0]


def test_files_tie_a_set_to_its_folder() -> None:
    boundary = Boundary(policy=policy(rule(services=("*",), files=("teams/shop/*",))))
    assert check_sets([secret_set(grant("shop_web"))], boundary) == []
    [line] = lines(check_sets([secret_set(grant("shop_web"), location="teams/pay/set.yaml")], boundary))
    assert (
        "declared in teams/pay/set.yaml, but policy rule 1 (ops/policy.yaml:15) allows it only in "
        "teams/shop/*" in line
    )


def test_adopting_a_secret_the_set_does_not_own_needs_adopt() -> None:
    mine = LiveSecret(
        id="s1",
        name="pw_v1",
        labels={"io.swarm-secrets.managed": "true", "io.swarm-secrets.set": "shop",
                "io.swarm-secrets.secret": "pw", "io.swarm-secrets.version": "1"},
    )  # fmt: skip
    theirs = LiveSecret(
        id="s2",
        name="other_v1",
        labels={"io.swarm-secrets.managed": "true", "io.swarm-secrets.set": "pay",
                "io.swarm-secrets.secret": "other", "io.swarm-secrets.version": "1"},
    )  # fmt: skip
    hand = LiveSecret(id="s3", name="handmade_pw")

    def live(secret: LiveSecret) -> LiveState:
        ref = SecretRef(secret_id=secret.id, secret_name=secret.name, target="pw")
        return LiveState(secrets=(mine, theirs, hand), services=(service("shop_web", refs=(ref,)),))

    strict = Boundary(policy=policy(rule(services=("*",))))
    sets = [secret_set(grant("shop_web"))]
    assert check_live(sets, live(mine), strict) == []  # its own version: no adoption
    [line] = lines(check_live(sets, live(hand), strict))
    assert line == (
        f"{FILE}:21: spec.secrets.pw.services[0].target: service 'shop_web' already mounts the hand-made "
        "secret 'handmade_pw' at /run/secrets/pw; replacing a secret the set does not own needs "
        "`adopt: true`, which policy rule 1 (ops/policy.yaml:15) does not give: choose another target or "
        "ask the operator"
    )
    assert "'other_v1' of set 'pay'" in lines(check_live(sets, live(theirs), strict))[0]
    adopting = Boundary(policy=policy(rule(services=("*",), adopt=True)))
    assert check_live(sets, live(hand), adopting) == []
    assert check_live(sets, live(hand), Boundary()) == []  # without a policy: the migration path stays open


def test_rule_texts() -> None:
    r = rule(services=("a_*",), stacks=("b",))
    assert r.services_text() == "services a_*; services of stacks b"
    assert rule().services_text() == "no service"
    assert policy().sets_text() == "none (the policy has no rules)"
    assert Rule(number=3, file="p.yaml", line=None, sets=("x",)).where == "policy rule 3 (p.yaml)"


def test_engine_access_from_raw_service_specs() -> None:
    from reconciler.engine.swarm import parse_service

    def raw(mounts: list[dict[str, object]], env: tuple[str, ...] = ()) -> dict[str, object]:
        container = {"Image": "x", "Mounts": mounts, "Env": list(env)}
        return {
            "ID": "i",
            "Version": {"Index": 3},
            "Spec": {"Name": "s", "TaskTemplate": {"ContainerSpec": container}},
        }

    socket = raw([{"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/var/run/docker.sock"}])
    assert engine_access(parse_service(socket)) == "mounts the engine socket /var/run/docker.sock"
    bind_options = {"type": "none", "o": "bind", "device": "/run"}
    volume_options = {"DriverConfig": {"Name": "local", "Options": bind_options}}
    volume = raw([{"Type": "volume", "Source": "runvol", "Target": "/r", "VolumeOptions": volume_options}])
    assert engine_access(parse_service(volume)) == "mounts /run, which holds /run/docker.sock"
    harmless: list[dict[str, object]] = [
        {"Type": "volume", "Source": "data", "Target": "/data"},
        {"Type": "tmpfs", "Target": "/tmp"},
    ]
    plain = raw(harmless, ("DB_HOST=db", "MODE"))
    parsed = parse_service(plain)
    assert engine_access(parsed) is None and parsed.env_names == frozenset({"DB_HOST", "MODE"})
    assert engine_access(parse_service(raw([], ("DOCKER_HOST=tcp://10.0.0.1:2376",)))) is not None


class _FreshSwarm:
    """Just enough of ``engine.swarm.Swarm`` for ``converge.prepare`` on a swarm without the key config."""

    def __init__(self, live: LiveState) -> None:
        self.live = live
        self.created: list[str] = []

    def observe(self, *, lean: bool = False, sets: object = None) -> LiveState:
        return self.live

    def find_config(self, name: str) -> tuple[str, bytes] | None:
        return ("cfg", b"k" * 32) if self.created else None

    def create_config(self, name: str, data: bytes, labels: object) -> str:
        self.created.append(name)
        return "cfg"


def test_a_refused_run_creates_not_even_the_key_config() -> None:
    from typing import cast

    from reconciler import converge
    from reconciler.core.model import SecretValue
    from reconciler.engine.executor import ApplyOptions
    from reconciler.engine.swarm import Swarm

    loaded = converge.Loaded(
        sets=(secret_set(grant("missing")),), values={("shop", "pw"): SecretValue(b"v")}, revision=None
    )
    fresh = _FreshSwarm(LiveState(services=(service("other"),)))
    with pytest.raises(PolicyViolation, match="service 'missing' does not exist"):
        converge.prepare(loaded, cast(Swarm, fresh))
    assert fresh.created == []
    fine = converge.Loaded(
        sets=(secret_set(grant("other")),), values={("shop", "pw"): SecretValue(b"v")}, revision=None
    )
    assert converge.prepare(fine, cast(Swarm, fresh)).plan.creates
    assert fresh.created == ["swarm-secrets-fingerprint-key"]
    with pytest.raises(ConfigError, match="--prune-orphans needs the manifests loaded with complete=True"):
        converge.prepare(fine, cast(Swarm, fresh), converge.Settings(apply=ApplyOptions(prune_orphans=True)))
