"""The policy file (``--policy``): loading, its schema's friendly all-at-once errors, the shipped
``deploy/policy.yaml``, and the CLI options that carry it (validate, plan, apply, status, run)."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.core.policy import DEFAULT_TARGETS
from reconciler.errors import PolicyFileError
from reconciler.manifests.policy import load_policy
from reconciler.manifests.schema import policy_schema

pytestmark = pytest.mark.usefixtures("restore_logging")

REPO = Path(__file__).resolve().parents[2]

EXAMPLE = """\
apiVersion: swarm-secrets/v1
kind: Policy
spec:
  rules:
    - sets: ["shop", "shop-*"]          # set-name globs this rule covers (first matching rule wins)
      services: ["shop_*"]              # service-name globs the set may grant to
      stacks: ["shop"]                  # and/or services of these stack namespaces
      targets: ["/run/secrets/*", "/etc/app/*"]   # allowed targets, globbed after normalising
      env: ["SHOP_*"]                   # variables `source.env` may read
      adopt: true                       # may replace hand-made secrets at managed targets (migration)
    - sets: ["*"]
  sops:
    env: [AWS_*]
"""

SET = """\
apiVersion: swarm-secrets/v1
kind: SecretSet
metadata: {name: NAME}
spec:
  secrets:
    NAME_pw:
      source: {env: VAR}
      services:
        - service: SERVICE
          target: TARGET
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def manifest(
    folder: Path, name: str, *, var: str = "SHOP_PW", service: str = "shop_web", target: str = "pw"
) -> Path:
    text = SET.replace("NAME", name).replace("VAR", var).replace("SERVICE", service).replace("TARGET", target)
    return write(folder / f"{name}.yaml", text)


def test_the_issue_example_loads(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path / "policy.yaml", EXAMPLE))
    first, second = policy.rules
    assert (first.number, first.line, first.sets, first.services, first.stacks) == (
        1, 5, ("shop", "shop-*"), ("shop_*",), ("shop",),
    )  # fmt: skip
    assert (first.targets, first.env, first.adopt, first.files) == (
        ("/run/secrets/*", "/etc/app/*"), ("SHOP_*",), True, None,
    )  # fmt: skip
    assert (second.services, second.targets, second.env, second.adopt) == ((), DEFAULT_TARGETS, (), False)
    assert policy.sops_env == ("AWS_*",)
    assert policy.rule_for("shop-eu") is first and policy.rule_for("pay") is second
    assert policy_schema()["properties"]["kind"]["const"] == "Policy"


def test_every_problem_at_once_with_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = write(
        tmp_path / "policy.yaml",
        """\
        apiVersion: swarm-secrets/v1
        kind: Policy
        spec:
          rules:
            - sets: []
              servces: [x]
            - sets: ["Shop"]
              targets: ["run/secrets/*"]
              adopt: yes please
            - sets: [a]
              targets: ["/etc/app/../x/*"]
              env: ["A B"]
        """,
    )
    with pytest.raises(PolicyFileError) as info:
        load_policy(bad)
    assert [str(p) for p in info.value.problems] == [
        "policy.yaml:5: spec.rules[0].sets: sets must name at least one set glob (`*` for all)",
        "policy.yaml:6: spec.rules[0].servces: unknown field 'servces'; did you mean 'services'? (allowed "
        "here: adopt, deploy, description, env, files, services, sets, stacks, targets)",
        "policy.yaml:7: spec.rules[1].sets[0]: 'Shop' is not a set-name glob: use lowercase letters, digits, "
        "'-', '*', '?'",
        "policy.yaml:8: spec.rules[1].targets[0]: 'run/secrets/*' is not a target glob: targets are absolute "
        "paths, like '/run/secrets/*'",
        "policy.yaml:9: spec.rules[1].adopt: adopt must be true or false, got 'yes please'",
        "policy.yaml:12: spec.rules[2].env[0]: 'A B' is not a variable-name glob: use letters, digits, '_', "
        "'*', '?'",
    ]
    # targets are checked for normal form once the shapes are right
    write(
        bad,
        "apiVersion: swarm-secrets/v1\nkind: Policy\nspec:\n  rules:\n  - {sets: [a], targets: [/a/../b]}\n",
    )
    with pytest.raises(PolicyFileError, match="target glob '/a/../b' is not normalised: write '/b'"):
        load_policy(bad)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "apiVersion: swarm-secrets/v1\nkind: SecretSet\nspec: {}\n",
            "kind 'SecretSet': a policy file holds",
        ),
        ("apiVersion: swarm-secrets/v2\nkind: Policy\nspec: {rules: []}\n", "apiVersion 'swarm-secrets/v2'"),
        ("kind: Policy\n---\nkind: Policy\n", "expected one YAML document (`kind: Policy`), found 2"),
        (
            "apiVersion: swarm-secrets/v1\nkind: Policy\n",
            "missing required field 'spec': add `spec: {rules: [...]}`",
        ),
        ("a: [b\n", "YAML syntax error"),
        ("apiVersion: swarm-secrets/v1\nkind: Policy\nspec: {rules: []}\nspec: {}\n", "duplicate key 'spec'"),
    ],
)
def test_wrong_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(
        PolicyFileError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    ):
        load_policy(write(tmp_path / "p.yaml", text))
    with pytest.raises(PolicyFileError, match="cannot read the policy file"):
        load_policy(tmp_path / "missing.yaml")


def test_the_shipped_policy_loads_and_covers_the_example(tmp_path: Path) -> None:
    shipped = REPO / "deploy" / "policy.yaml"
    policy = load_policy(shipped)
    assert [r.sets for r in policy.rules] == [("shop", "shop-*")]
    # as the stack uses it: the repository's root is the source root, the manifests are in manifests/
    shutil.copytree(REPO / "manifests", tmp_path / "repo" / "manifests")
    (tmp_path / "repo" / ".git").mkdir()
    copy = str(tmp_path / "repo" / "manifests")
    result = CliRunner().invoke(main, ["validate", "--offline", "--policy", str(shipped), copy])
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    # inside the repository it limits, it still works, with a warning
    inside = CliRunner().invoke(
        main, ["validate", "--offline", "--policy", str(shipped), str(REPO / "manifests")]
    )
    assert inside.exit_code == 0 and "lies inside the manifests' source root" in inside.stderr


def test_validate_holds_manifests_to_the_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "ops" / "policy.yaml", EXAMPLE.replace('    - sets: ["*"]\n', ""))
    manifest(tmp_path / "m", "shop")
    ok = CliRunner().invoke(main, ["validate", "--offline", "--policy", "ops/policy.yaml", "m"])
    assert (ok.exit_code, ok.stdout) == (
        0,
        "ok: 1 set, 1 secret, 1 service grant in 1 file (offline: sources not checked)\n",
    )
    manifest(tmp_path / "m", "pay", var="SHOP_PW", service="pay_api", target="/etc/pay/key")
    # the environment variable works as well as the option
    bad = CliRunner().invoke(
        main, ["validate", "--offline", "m"], env={"SWARM_SECRETS_POLICY": "ops/policy.yaml"}
    )
    assert bad.exit_code == 1 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "m/pay.yaml:3: metadata.name: set 'pay' matches no rule of the policy ops/policy.yaml, so it may do "
        "nothing; the policy has rules for sets shop, shop-*: rename the set or ask the operator for a rule"
    ]
    manifest(tmp_path / "m", "pay", var="SOPS_AGE_KEY", service="pay_api", target="/etc/pay/key")
    write(
        tmp_path / "m" / "pay.yaml",
        (tmp_path / "m" / "pay.yaml").read_text().replace("name: pay", "name: shop-pay"),
    )
    bad = CliRunner().invoke(main, ["validate", "--offline", "--policy", "ops/policy.yaml", "m"])
    assert bad.exit_code == 1
    assert bad.stderr.splitlines() == [
        "m/pay.yaml:7: spec.secrets.pay_pw.source.env: environment variable SOPS_AGE_KEY belongs to the "
        "reconciler's own configuration or credentials (SOPS_*) and is never a source; policy rule 1 "
        "(ops/policy.yaml:5) allows SHOP_*: give the value another way (a sops file)",
        "m/pay.yaml:10: spec.secrets.pay_pw.services[0].target: target /etc/pay/key is not allowed for set "
        "'shop-pay': policy rule 1 (ops/policy.yaml:5) allows targets /run/secrets/*, /etc/app/*",
        "m/pay.yaml:9: spec.secrets.pay_pw.services[0].service: service 'pay_api' is not allowed for set "
        "'shop-pay': policy rule 1 (ops/policy.yaml:5) allows services shop_*; services of stacks shop",
    ]


def test_a_broken_policy_fails_every_command_with_exit_1(tmp_path: Path) -> None:
    policy = write(tmp_path / "p.yaml", "apiVersion: swarm-secrets/v1\nkind: Policy\nspec: {rules: [{}]}\n")
    manifest(tmp_path / "m", "shop")
    for command in (["validate", "--offline"], ["plan"], ["apply", "--yes"], ["status"]):
        result = CliRunner().invoke(main, [*command, "--policy", str(policy), str(tmp_path / "m")])
        assert result.exit_code == 1, (command, result.output)
        expected = (
            f"{policy}:3: spec.rules[0]: missing required field 'sets': the set-name globs this rule covers"
        )
        assert result.stderr.splitlines() == [f"{expected}, e.g. [shop, shop-*]"]
    run = CliRunner().invoke(main, ["run", "--policy", str(policy), "--listen", "off", str(tmp_path / "m")])
    assert run.exit_code == 1 and "missing required field 'sets'" in run.stderr


def test_sops_env_option_takes_variable_globs(tmp_path: Path) -> None:
    manifest(tmp_path / "m", "shop")
    result = CliRunner().invoke(
        main,
        ["validate", "--offline", "--sops-env", "AWS_*", "--sops-env", "VAULT_TOKEN", str(tmp_path / "m")],
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["validate", "--offline", "--sops-env", "A;rm", str(tmp_path / "m")])
    assert result.exit_code == 2 and "is not a variable-name glob" in result.output


def test_the_stack_ships_the_policy_and_its_own_name() -> None:
    from tests.unit.test_ci_recipes import parse_cli

    stack = yaml.safe_load((REPO / "deploy" / "stack.yml").read_text())
    service = stack["services"]["reconciler"]
    command = [re.sub(r"\$\{[^}]*\}", "git@git.example.com:ops/m.git", str(w)) for w in service["command"]]
    parsed = parse_cli(command)
    [mount] = [c for c in service["configs"] if c["source"] == "policy"]
    assert parsed.params["policy"] == Path(mount["target"])
    assert stack["configs"]["policy"]["file"] == "./policy.yaml"
    assert "${SWARM_SECRETS_POLICY_VERSION" in stack["configs"]["policy"]["name"]
    # Swarm fills the template in per task: the reconciler knows its own service, whatever the stack name
    assert service["environment"]["SWARM_SECRETS_SELF_SERVICE"] == "{{.Service.Name}}"
    assert service["deploy"]["labels"]["io.swarm-secrets.role"] == "reconciler"
