"""The CI recipes (``examples/ci/*.yml``, ``.pre-commit-hooks.yaml``): they load, and what they run exists.

Checked without any CI service, Docker engine or network:

* every recipe is YAML that ``yaml.safe_load`` reads, with the triggers, jobs and rules the docs promise;
* every ``swarm-secrets …`` command in a ``run:``, ``script:`` or hook ``entry:`` (multi-line, with
  ``\\`` continuations, shell and CI variables replaced by a placeholder) parses with the real click CLI:
  the subcommand exists, each option is declared, values are valid, the paths exist in this checkout;
* the exit-code handling of the plan steps, run in a real shell with a fake ``swarm-secrets``:
  0 and 2 pass, 1 fails, and the note/comment body starts with the marker;
* the hidden plan-comment marker is the same everywhere;
* no recipe prints a secret: no ``set -x``, no ``curl -v``, no ``echo $SOPS_AGE_KEY`` (a secret may
  only be written to a file), GitHub secrets reach steps only through ``env:``; the key-writing steps,
  run with fake secrets, print nothing of them, write into the runner's temp folder, and are undone;
* every install of swarm-secrets points at this repository at a pinned tag or commit, and pip
  resolves such a line, against a clone of this repository, to this package with its extras;
* the workflow files validate against the official schemas (check-jsonschema's vendored copies of
  SchemaStore's GitHub workflow schema and GitLab's CI schema);
* least privilege: actions pinned by commit SHA on Node 24, environments for the credentials, no
  ``always()``, the comment step edits only its own bot's comment; an apply of a commit that is no
  longer the branch head is skipped (run in a real git repository); GitLab runs applies in a resource
  group with the newest-first process mode and outdated-job prevention documented.

The shell reading here is deliberately small (``shlex`` plus control operators): enough for recipes
written plainly, which is what recipes should be.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from reconciler.cli import main

REPO = Path(__file__).resolve().parents[2]
CI = REPO / "examples" / "ci"
GITHUB = CI / "github-actions.yml"
GITLAB = CI / "gitlab-ci.yml"
HOOKS = REPO / ".pre-commit-hooks.yaml"
DOCS = REPO / "README.md"
RECIPES = (*sorted(CI.glob("*.y*ml")), HOOKS)

MARKER = "<!-- swarm-secrets-plan -->"
PLACEHOLDER = "PLACEHOLDER"
HOME_IN_TEMP = "${{ runner.temp }}/swarm-secrets-home"
"""HOME of the GitHub steps that use the ssh key: a folder in the runner's temp folder, removed at the end."""
PINNED_INSTALL = "swarm-secrets[ssh] @ git+https://github.com/OWNER/swarm-secrets@v0.1.0"
"""How the recipes install swarm-secrets: this repository at a release tag (nothing of this name is on
PyPI, and anyone could register it)."""

# GitHub expressions are substituted before the shell runs, so they are replaced in the text; shell
# parameters ($X, ${X}, $(…), $((…)), $?) are replaced within each word after splitting.
GITHUB_EXPRESSION = re.compile(r"\$\{\{.*?\}\}", re.DOTALL)
SHELL_PARAMETER = re.compile(r"\$\(\(.*?\)\)|\$\(.*?\)|\$\{[^}]*\}|\$[A-Za-z_]\w*|\$[?#@*0-9!$-]")
SECRET_NAME = re.compile(r"KEY|TOKEN|PASSWORD|SECRET")
KEY_FILE = re.compile(r"\.ssh/id_|key\.pem")
SHELL_KEYWORDS = frozenset(
    {"!", "{", "}", "if", "then", "else", "elif", "do", "while", "until", "time", "exec"}
)
PRINTERS = frozenset({"echo", "printf"})
SAFE_SINKS = frozenset({"&1", "&2", "1", "2", "/dev/stdout", "/dev/stderr", "/dev/tty"})
LOG_SINKS = re.compile(r"\$\{?(GITHUB_OUTPUT|GITHUB_ENV|GITHUB_STEP_SUMMARY)\b")


# --- reading the recipes ---------------------------------------------------------------------------------


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def github_on(workflow: Mapping[Any, Any]) -> Any:
    # YAML 1.1 reads a bare `on` key as the boolean True; GitHub reads it as "on".
    return workflow["on"] if "on" in workflow else workflow[True]


@dataclass(frozen=True, slots=True, kw_only=True)
class Script:
    """One shell fragment of a recipe: a GitHub ``run:``, a GitLab script item, a hook's entry + args."""

    recipe: str
    where: str
    text: str
    secrets: frozenset[str] = frozenset()
    """Environment variables of this fragment that hold a secret (GitHub: mapped from ``secrets.*``)."""

    def __str__(self) -> str:
        return f"{self.recipe}: {self.where}"


def github_scripts() -> Iterator[Script]:
    workflow = load(GITHUB)
    for job_name, job in workflow["jobs"].items():
        for index, step in enumerate(job.get("steps", ())):
            if "run" not in step:
                continue
            env = step.get("env", {})
            secrets = frozenset(k for k, v in env.items() if "secrets." in str(v))
            yield Script(
                recipe=GITHUB.name,
                where=f"jobs.{job_name}.steps[{index}] ({step.get('name', step['run'][:30])})",
                text=step["run"],
                secrets=secrets,
            )


def _items(value: Any) -> Iterator[str]:
    # GitLab script lists may nest (from YAML anchors); GitLab flattens them.
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _items(item)


def gitlab_scripts() -> Iterator[Script]:
    for job_name, job in load(GITLAB).items():
        if not isinstance(job, dict):
            continue
        for key in ("before_script", "script", "after_script"):
            for index, text in enumerate(_items(job.get(key))):
                yield Script(recipe=GITLAB.name, where=f"{job_name}.{key}[{index}]", text=text)


def hook_scripts() -> Iterator[Script]:
    for hook in load(HOOKS):
        text = " ".join([hook["entry"], *map(shlex.quote, hook.get("args", ()))])
        yield Script(recipe=HOOKS.name, where=f"hook {hook['id']}", text=text)


def all_scripts() -> list[Script]:
    return [*github_scripts(), *gitlab_scripts(), *hook_scripts()]


# --- a small shell reader --------------------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def logical_lines(text: str) -> Iterator[list[str]]:
    """The words of each logical line: continuations joined, quotes spanning lines kept together."""
    text = re.sub(r"\\\n", " ", text)
    pending = ""
    for line in text.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            words = _tokens(pending)
        except ValueError:  # an open quote: the line goes on
            continue
        pending = ""
        if words:
            yield words
    assert not pending, f"unbalanced quotes in: {pending!r}"


def _is_redirect(word: str) -> bool:
    return bool(word) and set(word) <= set("<>&") and bool(set(word) & set("<>"))


def _is_operator(word: str) -> bool:
    return bool(word) and set(word) <= set("();|&") and not _is_redirect(word)


@dataclass(frozen=True, slots=True)
class Simple:
    """A simple command: its words (keywords and leading assignments dropped) and its redirections."""

    argv: tuple[str, ...]
    redirects: tuple[tuple[str, str], ...]


def simple_commands(text: str) -> Iterator[Simple]:
    for words in logical_lines(text):
        segment: list[str] = []
        for word in [*words, ";"]:
            if not _is_operator(word):
                segment.append(word)
                continue
            argv: list[str] = []
            redirects: list[tuple[str, str]] = []
            i = 0
            while i < len(segment):
                if _is_redirect(segment[i]):
                    redirects.append((segment[i], segment[i + 1] if i + 1 < len(segment) else ""))
                    i += 2
                    continue
                if segment[i].isdigit() and i + 1 < len(segment) and _is_redirect(segment[i + 1]):
                    i += 1  # a file descriptor number, as in 2>&1
                    continue
                argv.append(segment[i])
                i += 1
            while argv and (argv[0] in SHELL_KEYWORDS or re.match(r"[A-Za-z_]\w*=", argv[0])):
                argv.pop(0)
            if argv or redirects:
                yield Simple(tuple(argv), tuple(redirects))
            segment = []


def swarm_secrets_commands(script: Script) -> list[list[str]]:
    """Each ``swarm-secrets`` invocation in ``script``, as the argv after the program name."""
    text = GITHUB_EXPRESSION.sub(PLACEHOLDER, script.text)
    found = []
    for command in simple_commands(text):
        if command.argv and command.argv[0] == "swarm-secrets":
            found.append([SHELL_PARAMETER.sub(PLACEHOLDER, word) for word in command.argv[1:]])
    return found


# --- the real CLI ----------------------------------------------------------------------------------------


def declared_options(command: click.Command) -> dict[str, click.Option]:
    # From ``params``, not ``get_params(ctx)``: that caches a help option built from whatever context it
    # is given on the command object, which would change the real CLI for the tests that run after this.
    options = {
        name: param
        for param in command.params
        if isinstance(param, click.Option)
        for name in (*param.opts, *param.secondary_opts)
    }
    for name in main.context_settings["help_option_names"]:
        options[name] = click.Option([name], is_flag=True)
    return options


@dataclass(frozen=True, slots=True)
class Parsed:
    name: str
    params: dict[str, Any]


def parse_cli(argv: Sequence[str]) -> Parsed:
    """Parse ``swarm-secrets <argv>`` as the real CLI would, without running anything."""
    group_options = declared_options(main)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name = argv[i].split("=", 1)[0]
        assert name in group_options, f"{name} is not an option of swarm-secrets"
        option = group_options[name]
        i += 1 if option.is_flag or option.count or "=" in argv[i] else 2
    assert i < len(argv), f"no subcommand in {argv}"
    name = argv[i]
    assert name in main.commands, f"swarm-secrets has no command {name!r} (has {sorted(main.commands)})"
    command = main.commands[name]
    parents = [name]
    while isinstance(command, click.Group):  # `stack deploy`: a command of a group
        i += 1
        assert i < len(argv) and argv[i] in command.commands, f"no command of {name} in {argv}"
        parents.append(argv[i])
        command = command.commands[argv[i]]
        name = " ".join(parents)
    options = declared_options(command)
    for word in argv[i + 1 :]:
        if word == "--":
            break
        if word.startswith("-") and word != "-":
            flag = word.split("=", 1)[0]
            assert flag in options, f"swarm-secrets {name} has no option {flag} (has {sorted(options)})"
    with main.make_context("swarm-secrets", [*argv[: i + 1 - len(parents)], parents[0]]) as parent:
        with command.make_context(name, list(argv[i + 1 :]), parent=parent) as ctx:
            return Parsed(name, dict(ctx.params))


# --- every recipe loads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_recipe_is_yaml(path: Path) -> None:
    assert load(path) is not None


def test_the_recipes_are_all_there() -> None:
    assert {p.name for p in RECIPES} >= {"github-actions.yml", "gitlab-ci.yml", ".pre-commit-hooks.yaml"}
    assert DOCS.is_file()


# --- every swarm-secrets command parses with the real CLI ------------------------------------------------


def _command_cases() -> list[tuple[Script, list[str]]]:
    return [(script, argv) for script in all_scripts() for argv in swarm_secrets_commands(script)]


@pytest.mark.parametrize(
    ("script", "argv"), [pytest.param(s, a, id=f"{s}: {shlex.join(a)}") for s, a in _command_cases()]
)
def test_command_parses_with_the_real_cli(script: Script, argv: list[str]) -> None:
    parsed = parse_cli(argv)
    for path in parsed.params.get("paths", ()):
        if PLACEHOLDER not in str(path):
            assert (REPO / path).exists(), f"{script}: {path} does not exist in this checkout"


def _parsed_by_recipe() -> dict[str, list[Parsed]]:
    found: dict[str, list[Parsed]] = {}
    for script, argv in _command_cases():
        found.setdefault(script.recipe, []).append(parse_cli(argv))
    return found


def test_each_recipe_runs_the_commands_it_should() -> None:
    """Pull requests: validate offline, or plan (Markdown, detailed exit code). Main: a saved plan
    (`plan --out`) applied exactly (`apply --plan`, which needs no --yes: the saved plan is the
    approval)."""
    found = _parsed_by_recipe()
    for recipe in (GITHUB.name, GITLAB.name):
        commands = found[recipe]
        assert sorted(p.name for p in commands) == ["apply", "plan", "plan", "validate"], recipe
        for parsed in commands:
            assert parsed.params["paths"] == (Path("manifests/"),), recipe
        (validate,) = [p.params for p in commands if p.name == "validate"]
        assert validate["offline"] is True, recipe
        pr_plan, main_plan = sorted(
            (p.params for p in commands if p.name == "plan"), key=lambda p: bool(p["out"])
        )
        assert (pr_plan["fmt"], pr_plan["detailed_exitcode"], pr_plan["out"]) == ("markdown", True, None), (
            recipe
        )
        assert main_plan["out"] is not None and main_plan["fmt"] == "markdown", recipe
        (apply,) = [p.params for p in commands if p.name == "apply"]
        assert apply["plan_file"] is not None and apply["plan_file"].name == main_plan["out"].name, recipe
    [hook] = found[HOOKS.name]
    assert (hook.name, hook.params["offline"]) == ("validate", True)


def test_the_command_reader_finds_commands_in_awkward_places() -> None:
    script = Script(
        recipe="t",
        where="t",
        text=(
            "# swarm-secrets plan --not-an-option (a comment)\n"
            'echo "swarm-secrets plan failed"\n'
            "rc=0\n"
            "swarm-secrets plan manifests/ \\\n"
            "  --format markdown \\\n"
            '  --revision "${{ github.sha }}" > "$RUNNER_TEMP/plan.md" 2>&1 || rc=$?\n'
            "if true; then SWARM_SECRETS_LOG_LEVEL=info\\\n"
            "  swarm-secrets --log-level debug validate --offline; fi\n"
            "x=$(swarm-secrets status --format json)\n"
        ),
    )
    assert swarm_secrets_commands(script) == [
        ["plan", "manifests/", "--format", "markdown", "--revision", PLACEHOLDER],
        ["--log-level", "debug", "validate", "--offline"],
        ["status", "--format", "json"],
    ]
    assert parse_cli(["--log-level", "debug", "validate", "--offline"]).params["offline"] is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["deploy", "manifests/"], "no command 'deploy'"),
        (["plan", "--format", "markdown", "--auto-approve"], "no option --auto-approve"),
        (["--verbose", "plan"], "--verbose is not an option"),
    ],
)
def test_parse_cli_rejects_what_the_cli_lacks(argv: list[str], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        parse_cli(argv)


def test_parse_cli_rejects_a_bad_value() -> None:
    with pytest.raises(click.BadParameter):
        parse_cli(["plan", "--format", "html"])


def test_the_entry_point_is_the_cli() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"]["swarm-secrets"] == "reconciler.cli:main"
    assert "ssh" in project["optional-dependencies"]


# --- GitHub Actions --------------------------------------------------------------------------------------


def _steps(job: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(job["steps"])


def _step_running(job: Mapping[str, Any], fragment: str) -> dict[str, Any]:
    [step] = [s for s in _steps(job) if fragment in s.get("run", "")]
    return step


def test_github_triggers() -> None:
    on = github_on(load(GITHUB))
    assert "manifests/**" in on["pull_request"]["paths"]
    assert on["push"]["branches"] == ["main"]
    assert "manifests/**" in on["push"]["paths"]


def test_github_plan_job() -> None:
    workflow = load(GITHUB)
    job = workflow["jobs"]["plan"]
    assert "pull_request" in job["if"]
    assert job["permissions"]["pull-requests"] == "write"
    key = next(s for s in _steps(job) if s.get("id") == "key")
    assert key["env"] == {"SOPS_AGE_KEY": "${{ secrets.SOPS_AGE_KEY }}"}
    validate = _step_running(job, "swarm-secrets validate --offline")
    assert validate["if"] == "steps.key.outputs.available != 'true'"
    plan = _step_running(job, "swarm-secrets plan")
    assert plan["if"] == "steps.key.outputs.available == 'true'"
    assert plan["env"] == {"SOPS_AGE_KEY": "${{ secrets.SOPS_AGE_KEY }}", "HOME": HOME_IN_TEMP}
    ssh = _step_running(job, "id_ed25519")
    assert ssh["if"] == "steps.key.outputs.available == 'true'"


def test_github_comment_is_updated_not_duplicated() -> None:
    job = load(GITHUB)["jobs"]["plan"]
    [step] = [s for s in _steps(job) if str(s.get("uses", "")).startswith("actions/github-script@")]
    assert step["if"] == "${{ !cancelled() && steps.plan.outputs.exit-code != '' }}"
    script = step["with"]["script"]
    # only the comment this workflow's bot wrote: a user quoting the marker cannot get theirs edited
    assert "c.user?.login === 'github-actions[bot]' && c.body?.includes(marker)" in script
    assert f"const marker = '{MARKER}';" in script
    assert "c.body?.includes(marker)" in script
    assert "${marker}" in script  # the body carries the marker it is found by
    for call in ("github.paginate(github.rest.issues.listComments", "updateComment", "createComment"):
        assert call in script
    assert script.index("updateComment") < script.index("createComment")


def test_github_apply_job_never_overlaps() -> None:
    job = load(GITHUB)["jobs"]["apply"]
    assert "refs/heads/main" in job["if"] and "pull_request" in job["if"]
    assert job["concurrency"]["group"] == "swarm-secrets-apply"
    assert job["concurrency"]["cancel-in-progress"] is False
    apply = _step_running(job, "swarm-secrets apply")
    assert apply["env"] == {"SOPS_AGE_KEY": "${{ secrets.SOPS_AGE_KEY }}", "HOME": HOME_IN_TEMP}


def test_github_key_reaches_only_the_steps_that_need_it() -> None:
    workflow = load(GITHUB)
    assert "SOPS_AGE_KEY" not in workflow.get("env", {})
    for name, job in workflow["jobs"].items():
        assert "SOPS_AGE_KEY" not in job.get("env", {}), name
        for step in _steps(job):
            if "SOPS_AGE_KEY" in step.get("env", {}):
                run = step["run"]
                assert step.get("id") == "key" or re.search(r"swarm-secrets (plan|apply)\b", run), step


def test_github_uses_the_ssh_extra_for_an_ssh_engine() -> None:
    workflow = load(GITHUB)
    assert workflow["env"]["DOCKER_HOST"].startswith("ssh://deploy@")
    for job in workflow["jobs"].values():
        installs = [s["run"] for s in _steps(job) if "pip install" in s.get("run", "")]
        assert installs == [f"pip install '{PINNED_INSTALL}'"]


# --- GitLab CI -------------------------------------------------------------------------------------------


def _rules_text(job: Mapping[str, Any]) -> list[str]:
    return [str(rule.get("if", "")) for rule in job["rules"]]


def test_gitlab_jobs() -> None:
    pipeline = load(GITLAB)
    assert pipeline["stages"] == ["plan", "apply"]
    validate, plan, apply = pipeline["validate-offline"], pipeline["plan"], pipeline["apply"]
    plan_main = pipeline["plan-main"]

    # every merge request validates offline; the plan job too runs on merge requests, and ends early
    # without the key (environment-scoped variables are not visible to rules)
    assert _rules_text(validate) == _rules_text(plan) == ['$CI_PIPELINE_SOURCE == "merge_request_event"']
    assert plan["extends"] == apply["extends"] == plan_main["extends"] == ".engine"
    assert validate["extends"] == ".swarm-secrets"
    first = list(_items(plan["script"]))[0]
    assert 'if [ -z "$SOPS_AGE_KEY" ]' in first and "exit 0" in first

    # credentials per environment: the apply's protected ones reach the production environment only
    assert plan["environment"] == {"name": "swarm-plan", "action": "prepare"}
    assert apply["environment"]["name"] == "production"
    assert plan_main["environment"] == {"name": "production", "action": "prepare"}
    assert apply["resource_group"] == "swarm-production"
    # the apply applies the plan that plan-main saved, on the same commit, under the same rules
    assert apply["needs"] == ["plan-main"] and "plan.json" in plan_main["artifacts"]["paths"]
    assert _rules_text(apply) == _rules_text(plan_main)
    [rule] = _rules_text(apply)
    assert "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH" in rule and '$CI_COMMIT_REF_PROTECTED == "true"' in rule


def test_gitlab_note_is_updated_not_duplicated() -> None:
    plan = load(GITLAB)["plan"]
    assert plan["variables"]["PLAN_MARKER"] == MARKER
    script = "\n".join(_items(plan["script"]))
    assert '"$PLAN_MARKER"' in script and 'os.environ["PLAN_MARKER"]' in script
    assert "merge_requests/$CI_MERGE_REQUEST_IID/notes" in script
    assert '--header "PRIVATE-TOKEN: $GITLAB_TOKEN"' in script
    assert "--request PUT" in script and "--request POST" in script
    assert script.index("--request PUT") < script.index("--request POST")


def test_gitlab_uses_the_ssh_extra_for_an_ssh_engine() -> None:
    pipeline = load(GITLAB)
    engine = pipeline[".engine"]
    assert engine["variables"]["DOCKER_HOST"].startswith("ssh://deploy@")
    installs = [i for i in _items(engine["before_script"]) if i.startswith("pip install")]
    assert installs == [f"pip install --quiet '{PINNED_INSTALL}'"]
    # the same install as every other job's (a YAML anchor, flattened by GitLab)
    assert engine["before_script"][0] == pipeline[".swarm-secrets"]["before_script"]


# --- pre-commit ------------------------------------------------------------------------------------------


def test_pre_commit_hook() -> None:
    [hook] = load(HOOKS)
    assert hook["id"] == "swarm-secrets-validate"
    assert hook["entry"] == "swarm-secrets validate --offline"
    assert hook["language"] == "python"
    assert hook["pass_filenames"] is False
    files = re.compile(hook["files"])
    assert files.search("manifests/shop.yaml") and files.search("manifests/teams/a.yml")
    assert not files.search("manifests/config/smtp_user.txt") and not files.search("docs/manifests/x.yaml")


# --- the plan steps' exit codes, in a real shell ---------------------------------------------------------


def _fake_cli(folder: Path, exit_code: int) -> Mapping[str, str]:
    fake = folder / "bin" / "swarm-secrets"
    fake.parent.mkdir(parents=True)
    fake.write_text(f"#!/bin/sh\nprintf '### swarm-secrets plan\\n\\nfake plan\\n'\nexit {exit_code}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return {
        "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(folder),
        "LC_ALL": "C.UTF-8",
    }


@pytest.mark.parametrize(("exit_code", "ok"), [(0, True), (2, True), (1, False), (3, False)])
def test_github_plan_step_exit_codes(tmp_path: Path, exit_code: int, ok: bool) -> None:
    run = _step_running(load(GITHUB)["jobs"]["plan"], "swarm-secrets plan")["run"]
    env = {
        **_fake_cli(tmp_path, exit_code),
        "RUNNER_TEMP": str(tmp_path),
        "GITHUB_OUTPUT": str(tmp_path / "output"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
    }
    # GitHub runs `run:` with `bash -e {0}`.
    result = subprocess.run(["bash", "-e", "-c", run], env=env, capture_output=True, text=True, check=False)
    assert (result.returncode == 0) is ok, result
    assert (tmp_path / "output").read_text() == f"exit-code={exit_code}\n"
    assert (tmp_path / "plan.md").read_text().startswith("### swarm-secrets plan")


@pytest.mark.parametrize(("exit_code", "ok"), [(0, True), (2, True), (1, False)])
def test_gitlab_plan_script_exit_codes(tmp_path: Path, exit_code: int, ok: bool) -> None:
    items = list(_items(load(GITLAB)["plan"]["script"]))
    # The first item ends the job without a key, the second makes the note body, the last fails the
    # job; those between talk to the GitLab API.
    script = "\n".join([items[0], items[1], items[-1]])
    env = {
        **_fake_cli(tmp_path, exit_code),
        "SOPS_AGE_KEY": "AGE-SECRET-KEY-1FAKE",
        "PLAN_MARKER": MARKER,
        "CI_COMMIT_SHORT_SHA": "abc1234",
        "CI_JOB_URL": "https://gitlab.example/job/1",
    }
    result = subprocess.run(
        ["sh", "-e", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert (result.returncode == 0) is ok, result
    body = (tmp_path / "body.md").read_text(encoding="utf-8")
    assert body.startswith(MARKER + "\n### swarm-secrets plan\n")
    assert ("fake plan" in body) is ok and ("The plan failed (exit 1)" in body) is not ok


# --- the marker ------------------------------------------------------------------------------------------


def test_the_marker_is_the_same_everywhere() -> None:
    markers = re.compile(r"<!--\s*swarm[-_ ]?secrets[^>]*-->", re.IGNORECASE)
    for path in (*RECIPES, DOCS):
        for found in markers.findall(path.read_text(encoding="utf-8")):
            assert found == MARKER, f"{path.name}: {found!r}"
    for path in (GITHUB, GITLAB, DOCS):
        assert MARKER in path.read_text(encoding="utf-8"), path.name


def test_the_docs_name_every_secret_the_recipes_use() -> None:
    used = set(re.findall(r"secrets\.([A-Z_]+)", GITHUB.read_text(encoding="utf-8")))
    used |= set(re.findall(r"\$\{?([A-Z_]*(?:KEY|TOKEN|KNOWN_HOSTS))\b", GITLAB.read_text(encoding="utf-8")))
    used -= {"DOCKER_TLS_CA", "DOCKER_TLS_CERT", "DOCKER_TLS_KEY"}  # the commented-out TLS variant
    docs = DOCS.read_text(encoding="utf-8")
    assert used >= {"SOPS_AGE_KEY", "DEPLOY_SSH_KEY", "SSH_KNOWN_HOSTS", "GITLAB_TOKEN"}
    assert not {name for name in used if f"`{name}`" not in docs}


# --- no secret is ever printed ---------------------------------------------------------------------------


def _secret_names(script: Script) -> frozenset[str]:
    names = set(re.findall(r"\$\{?([A-Za-z_]\w*)", script.text))
    return frozenset(n for n in names if SECRET_NAME.search(n)) | script.secrets


def leaks(script: Script) -> list[str]:
    """Why ``script`` could print a secret; empty when it cannot (as far as this reader sees)."""
    problems = []
    text = GITHUB_EXPRESSION.sub(PLACEHOLDER, script.text)
    if "secrets." in script.text:
        problems.append("uses ${{ secrets.* }} in the script: pass it through env: instead")
    secret_names = _secret_names(script)
    for command in simple_commands(text):
        argv = command.argv
        if not argv:
            continue
        shown = " ".join(argv)
        if argv[0] == "set" and (len(argv) == 1 or any(re.match(r"-\w*x|xtrace", a) for a in argv[1:])):
            problems.append(f"traces or dumps variables: {shown}")
        if (argv[0] in {"env", "printenv"} and len(argv) == 1) or argv[:2] in (
            ("export", "-p"),
            ("declare", "-p"),
        ):
            problems.append(f"dumps the environment: {shown}")
        if argv[0] in {"bash", "sh"} and "-x" in argv:
            problems.append(f"traces: {shown}")
        if argv[0] == "curl" and any(a in {"-v", "--verbose"} or a.startswith("--trace") for a in argv):
            problems.append(f"curl prints its headers (the token): {shown}")
        referenced = {n for n in secret_names if any(re.search(rf"\${{?{n}\b", a) for a in argv)}
        to_file = [
            target
            for op, target in command.redirects
            if ">" in op and target not in SAFE_SINKS and not LOG_SINKS.search(target)
        ]
        if argv[0] in PRINTERS and referenced and not to_file:
            problems.append(f"prints {sorted(referenced)} to the log: {shown}")
        if argv[0] == "cat" and any(KEY_FILE.search(a) for a in argv) and not to_file:
            problems.append(f"prints a key file: {shown}")
        if referenced and any(LOG_SINKS.search(t) for _, t in command.redirects):
            problems.append(f"writes {sorted(referenced)} to a step output or environment file: {shown}")
    return problems


@pytest.mark.parametrize("script", all_scripts(), ids=str)
def test_no_recipe_prints_a_secret(script: Script) -> None:
    assert leaks(script) == []


def test_no_debug_trace_in_gitlab() -> None:
    text = GITLAB.read_text(encoding="utf-8")
    assert "CI_DEBUG_TRACE" not in text and "CI_DEBUG_SERVICES" not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('echo "$SOPS_AGE_KEY"', "prints ['SOPS_AGE_KEY']"),
        ("printf '%s' ${DEPLOY_SSH_KEY} >&2", "prints ['DEPLOY_SSH_KEY']"),
        ('echo "key=$SOPS_AGE_KEY" >> "$GITHUB_OUTPUT"', "step output"),
        ("set -eux", "traces"),
        ("set -o xtrace", "traces"),
        ("env", "dumps the environment"),
        ("export -p", "dumps the environment"),
        ('curl -v --header "PRIVATE-TOKEN: $GITLAB_TOKEN" x', "curl prints"),
        ("cat ~/.ssh/id_ed25519", "prints a key file"),
        ("echo ${{ secrets.X }} > f", "pass it through env"),
    ],
)
def test_leak_checker_catches(text: str, expected: str) -> None:
    problems = leaks(Script(recipe="t", where="t", text=text))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "text",
    [
        "printf '%s\\n' \"$DEPLOY_SSH_KEY\" > ~/.ssh/id_ed25519",
        'if [ -n "$SOPS_AGE_KEY" ]; then echo "available=true" >> "$GITHUB_OUTPUT"; fi',
        'curl --fail --silent --header "PRIVATE-TOKEN: $GITLAB_TOKEN" "$url" > /dev/null',
        "set -e",
    ],
)
def test_leak_checker_allows(text: str) -> None:
    assert leaks(Script(recipe="t", where="t", text=text)) == []


FAKE_SECRETS = {
    "SOPS_AGE_KEY": "AGE-SECRET-KEY-1FAKEFAKEFAKE",
    "DEPLOY_SSH_KEY": "-----BEGIN OPENSSH PRIVATE KEY-----\nfake-ssh-key\n-----END OPENSSH PRIVATE KEY-----",
    "SSH_KNOWN_HOSTS": "manager.example.com ssh-ed25519 AAAAfakehostkey",
}


def _run_quietly(script: str, tmp_path: Path, extra: Mapping[str, str]) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **FAKE_SECRETS, **extra}
    result = subprocess.run(["bash", "-e", "-c", script], env=env, capture_output=True, text=True, check=True)
    output = result.stdout + result.stderr
    for value in FAKE_SECRETS.values():
        for line in value.splitlines():
            assert line not in output
    return output


def _check_key_files(home: Path) -> None:
    """The key files, under ``home`` (a folder of the job's own in the temp folder, never ~/.ssh)."""
    key = home / ".ssh" / "id_ed25519"
    assert key.read_text() == FAKE_SECRETS["DEPLOY_SSH_KEY"] + "\n"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (home / ".ssh" / "known_hosts").read_text() == FAKE_SECRETS["SSH_KNOWN_HOSTS"] + "\n"


@pytest.mark.parametrize("job", ["plan", "apply"])
def test_github_ssh_step_writes_the_key_and_prints_nothing(tmp_path: Path, job: str) -> None:
    steps = load(GITHUB)["jobs"][job]["steps"]
    run = _step_running(load(GITHUB)["jobs"][job], "id_ed25519")["run"]
    temp = tmp_path / "runner-temp"
    temp.mkdir()
    assert _run_quietly(run, tmp_path, {"RUNNER_TEMP": str(temp)}) == ""
    _check_key_files(temp / "swarm-secrets-home")
    assert not (tmp_path / ".ssh").exists()  # the runner user's own ~/.ssh is left alone
    # the steps that use the key run with that folder as HOME, and the last step removes it
    users = [s for s in steps if re.search(r"swarm-secrets (plan|apply)\b", s.get("run", ""))]
    assert users and all(s["env"]["HOME"] == HOME_IN_TEMP for s in users)
    cleanup = steps[-1]
    assert cleanup["if"] == "${{ !cancelled() }}"
    _run_quietly(cleanup["run"], tmp_path, {"RUNNER_TEMP": str(temp)})
    assert not (temp / "swarm-secrets-home").exists()


@pytest.mark.parametrize("available", [True, False])
def test_github_key_check_prints_no_key(tmp_path: Path, available: bool) -> None:
    job = load(GITHUB)["jobs"]["plan"]
    run = next(s for s in _steps(job) if s.get("id") == "key")["run"]
    extra = {"GITHUB_OUTPUT": str(tmp_path / "output")}
    if not available:
        extra["SOPS_AGE_KEY"] = ""
    _run_quietly(run, tmp_path, extra)
    assert (tmp_path / "output").read_text() == f"available={str(available).lower()}\n"


def test_gitlab_engine_setup_writes_the_key_and_prints_nothing(tmp_path: Path) -> None:
    engine = load(GITLAB)[".engine"]
    items = [i for i in _items(engine["before_script"]) if not i.startswith(("pip install", "apt-get"))]
    extra = {"TMPDIR": str(tmp_path), "CI_JOB_ID": "4711"}
    assert _run_quietly("\n".join(items), tmp_path, extra) == ""
    _check_key_files(tmp_path / "swarm-secrets-4711")
    assert not (tmp_path / ".ssh").exists()
    _run_quietly("\n".join(_items(engine["after_script"])), tmp_path, extra)
    assert not (tmp_path / "swarm-secrets-4711").exists()


def _gitlab_items(pipeline: Mapping[str, Any], job_name: str, key: str) -> list[str]:
    """A job's ``key`` list, inherited through ``extends`` as GitLab does when the job has none."""
    job = pipeline[job_name]
    if key in job:
        return list(_items(job[key]))
    parent = job.get("extends")
    return _gitlab_items(pipeline, parent, key) if isinstance(parent, str) else []


def _shell_programs() -> Iterator[Any]:
    """Per GitHub step; per GitLab job, before_script and script (one shell, in order)."""
    for script in github_scripts():
        yield pytest.param("bash", script.text, id=str(script))
    pipeline = load(GITLAB)
    for job_name, job in pipeline.items():
        if isinstance(job, dict) and "script" in job:
            items = [*_gitlab_items(pipeline, job_name, "before_script"), *_items(job["script"])]
            # GitLab's python image has bash, but the scripts keep to POSIX sh.
            yield pytest.param("sh", "\n".join(items), id=f"{GITLAB.name}: {job_name}")


# scripts/test installs shellcheck (and sets SWARM_SECRETS_REQUIRE_SWARM): there, a missing one fails.
@pytest.mark.skipif(
    shutil.which("shellcheck") is None and not os.environ.get("SWARM_SECRETS_REQUIRE_SWARM"),
    reason="shellcheck is not installed",
)
@pytest.mark.parametrize(("shell", "text"), list(_shell_programs()))
def test_shellcheck(shell: str, text: str, tmp_path: Path) -> None:
    target = tmp_path / "script.sh"
    target.write_text(GITHUB_EXPRESSION.sub(PLACEHOLDER, text))
    # SC2016: '$…' in single quotes is meant literally (python -c '…os.environ…', printf formats).
    result = subprocess.run(
        ["shellcheck", "--shell", shell, "--exclude", "SC2016", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


# --- the deployment stack and the image run the real CLI --------------------------------------------------


def test_the_stack_command_parses_with_the_real_cli() -> None:
    stack = load(REPO / "deploy" / "stack.yml")
    command = [re.sub(r"\$\{[^}]*\}", "git@git.example.com:ops/manifests.git", str(word))
               for word in stack["services"]["reconciler"]["command"]]  # fmt: skip
    parsed = parse_cli(command)
    assert parsed.name == "run"
    assert parsed.params["git_ssh_key_file"] == Path("/run/secrets/git_deploy_key")
    assert parsed.params["github_webhook_secret_file"] == Path("/run/secrets/webhook_secret")
    assert parsed.params["reconcile_token_file"] == Path("/run/secrets/reconcile_token")
    assert parsed.params["git_known_hosts_file"] == Path("/etc/swarm-secrets/known_hosts")
    assert parsed.params["webhook_secret_file"] is None  # deprecated
    assert "ports" not in stack["services"]["reconciler"]  # nothing published: a TLS proxy in front
    environment = stack["services"]["reconciler"]["environment"]
    assert environment["SWARM_SECRETS_LOG_FORMAT"] in ("text", "json")


def test_the_stack_runs_a_standby_on_another_manager_and_can_update_it() -> None:
    deploy = load(REPO / "deploy" / "stack.yml")["services"]["reconciler"]["deploy"]
    assert deploy["replicas"] >= 2  # one leads (the lease of `run`), the others stand by
    assert deploy["placement"]["constraints"] == ["node.role == manager"]
    assert deploy["placement"]["max_replicas_per_node"] == 1  # never two on the node that goes down
    # as many replicas as managers leave no room for a start-first task: only stop-first progresses
    assert deploy["update_config"]["order"] == deploy["rollback_config"]["order"] == "stop-first"


def test_the_image_runs_the_cli() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["/usr/bin/tini", "-s", "--", "swarm-secrets"]' in dockerfile
    assert 'CMD ["run"]' in dockerfile
    assert "/healthz" in dockerfile


# --- installs point at this repository -----------------------------------------------------------------

# `name[extras] @ git+https://host/owner/swarm-secrets(.git)@<tag or full sha>`
PINNED = re.compile(
    r"(?P<name>[A-Za-z0-9._-]+)(?:\[(?P<extras>[a-z0-9,_-]+)\])? @ "
    r"git\+https://[^/\s]+/[^/\s]+/swarm-secrets(?:\.git)?@(?P<ref>v\d+\.\d+\.\d+|[0-9a-f]{40})"
)
LOCAL = re.compile(r"\.(\[[a-z0-9,_-]+\])?")  # a checkout of this repository itself: `.`, `.[ssh]`


def _pip_installs(text: str) -> list[str]:
    """The requirement arguments of every ``pip install`` in ``text`` (shell)."""
    found: list[str] = []
    for command in simple_commands(GITHUB_EXPRESSION.sub(PLACEHOLDER, text)):
        argv = list(command.argv)
        if argv[:3] in (["python", "-m", "pip"], ["python3", "-m", "pip"]):
            argv = argv[2:]
        if len(argv) >= 2 and argv[0] in ("pip", "pip3") and argv[1] == "install":
            found.extend(a for a in argv[2:] if not a.startswith("-"))
    return found


def _readme_shell_blocks() -> list[str]:
    return re.findall(r"```(?:sh|bash|shell)\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)


def install_requirements() -> list[tuple[str, str]]:
    """(where, requirement) for every pip install in the recipes and the README."""
    found = [(str(s), r) for s in all_scripts() for r in _pip_installs(s.text)]
    found += [("README.md", r) for block in _readme_shell_blocks() for r in _pip_installs(block)]
    return found


def test_every_install_points_at_this_repository() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    found = install_requirements()
    recipes = {where.split(":")[0] for where, _ in found}
    assert {GITHUB.name, GITLAB.name, "README.md"} <= recipes, recipes
    for where, requirement in found:
        if LOCAL.fullmatch(requirement):
            assert where == "README.md", f"{where}: a CI job has no checkout of swarm-secrets: {requirement}"
            continue
        pinned = PINNED.fullmatch(requirement)
        assert pinned, f"{where}: {requirement!r} is not this repository at a pinned tag or commit"
        assert pinned["name"] == project["name"], where
        extras = set((pinned["extras"] or "").split(",")) - {""}
        assert extras <= set(project["optional-dependencies"]), f"{where}: unknown extras {extras}"
    # one pin everywhere: upgrading means changing it in one way in every place
    assert {r for _, r in found if not LOCAL.fullmatch(r)} == {PINNED_INSTALL}


def test_the_pinned_install_resolves_to_this_package(tmp_path: Path) -> None:
    """pip itself reads the recipes' requirement and builds this package's metadata from a clone of this
    repository at the pinned ref (the release tag is made in the clone when the repository has none yet,
    as releasing will): name, version and extras come out of this repository's pyproject."""
    pinned = PINNED.fullmatch(PINNED_INSTALL)
    assert pinned is not None
    clone = tmp_path / "swarm-secrets"
    subprocess.run(
        ["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True, capture_output=True
    )
    ref = pinned["ref"]
    known = subprocess.run(["git", "-C", str(clone), "rev-parse", "-q", "--verify", f"{ref}^{{commit}}"],
                           capture_output=True, check=False)  # fmt: skip
    if known.returncode != 0:
        assert ref.startswith("v"), f"commit {ref} is not in this repository"
        git_env = {**os.environ, "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
        subprocess.run(["git", "-C", str(clone), "tag", ref], check=True, env=git_env)
    # (a PEP 508 URL needs a host: file://localhost/…)
    local = PINNED_INSTALL.replace(
        PINNED_INSTALL.split(" @ ")[1].split("@")[0], f"git+file://localhost{clone}"
    )
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-build-isolation",
         "--ignore-installed", "--quiet", "--disable-pip-version-check", "--report", str(report), local],
        capture_output=True, text=True, timeout=300, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("SETUPTOOLS_SCM")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [item] = json.loads(report.read_text())["install"]
    metadata = item["metadata"]
    assert metadata["name"] == "swarm-secrets"
    assert "ssh" in metadata["provides_extra"]
    if ref.startswith("v"):
        assert metadata["version"] == ref.removeprefix("v")


def test_pre_commit_users_pin_a_release() -> None:
    for text in (DOCS.read_text(encoding="utf-8"), HOOKS.read_text(encoding="utf-8")):
        revs = re.findall(r"\brev: (\S+)", text)
        assert revs and all(re.fullmatch(r"v\d+\.\d+\.\d+|[0-9a-f]{40}", rev) for rev in revs), revs


# --- the official schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "path"), [("vendor.github-workflows", GITHUB), ("vendor.gitlab-ci", GITLAB)]
)
def test_recipe_validates_against_the_official_schema(schema: str, path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


# --- least privilege -------------------------------------------------------------------------------------

# The first major release of each action that runs on Node 24 (Node 20 is deprecated on GitHub's runners).
NODE24_SINCE = {
    "actions/checkout": 5,
    "actions/setup-python": 6,
    "actions/github-script": 8,
    "actions/upload-artifact": 6,
    "actions/download-artifact": 7,
}
USES = re.compile(r"^\s*(?:- )?uses: (\S+)(.*)$", re.MULTILINE)


def test_actions_are_pinned_by_commit_sha_on_node24() -> None:
    uses = USES.findall(GITHUB.read_text(encoding="utf-8"))
    assert uses
    for reference, comment in uses:
        action, _, sha = reference.partition("@")
        assert re.fullmatch(r"[0-9a-f]{40}", sha), f"{reference}: pin a full commit SHA"
        version = re.fullmatch(r"\s*# v(\d+)(\.\d+)*", comment)
        assert version, f"{reference}: say which release the SHA is, as `# vN.N.N`"
        assert action in NODE24_SINCE, f"{action}: which major release runs on Node 24?"
        assert int(version[1]) >= NODE24_SINCE[action], f"{reference} {comment}: a Node 20 release"


def test_github_applies_on_main_exactly_the_plan_saved_before_the_approval() -> None:
    jobs = load(GITHUB)["jobs"]
    plan_main, apply = jobs["plan-main"], jobs["apply"]
    assert apply["needs"] == "plan-main" and "needs.plan-main.outputs.current == 'true'" in apply["if"]
    assert plan_main["environment"] == "swarm-plan" and apply["environment"] == "swarm-production"
    (upload,) = [
        s for s in _steps(plan_main) if str(s.get("uses", "")).startswith("actions/upload-artifact@")
    ]
    (download,) = [
        s for s in _steps(apply) if str(s.get("uses", "")).startswith("actions/download-artifact@")
    ]
    assert upload["with"]["name"] == download["with"]["name"]
    assert upload["with"]["path"].endswith("/saved-plan/plan.json")
    assert download["with"]["path"] == upload["with"]["path"].removesuffix("/plan.json")
    # the saved plan holds no value, but it still goes away soon
    assert upload["with"]["retention-days"] == 1


def test_github_credentials_live_in_environments() -> None:
    workflow = load(GITHUB)
    text = GITHUB.read_text(encoding="utf-8")
    assert "always()" not in re.sub(r"#.*", "", text)
    plan, apply = workflow["jobs"]["plan"], workflow["jobs"]["apply"]
    assert apply["environment"] == "swarm-production"
    assert plan["environment"] == "swarm-plan"
    for job in (plan, apply):
        for step in _steps(job):
            for value in step.get("env", {}).values():
                if "secrets." in str(value):
                    assert step.get("if") != "always()", step
    # the header tells how to protect them
    for words in ("Required reviewers", "main only", 'restrict,command="docker system dial-stdio"'):
        assert words in text, words


def test_github_apply_has_the_history_and_skips_a_commit_that_is_no_longer_the_head(tmp_path: Path) -> None:
    job = load(GITHUB)["jobs"]["apply"]
    steps = _steps(job)
    assert steps[0]["with"]["fetch-depth"] == 0
    [guard] = [s for s in steps if s.get("id") == "head"]
    later = steps[steps.index(guard) + 1 : -1]
    assert later and all(s["if"] == "steps.head.outputs.current == 'true'" for s in later)

    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, capture_output=True,
                              text=True).stdout.strip()  # fmt: skip

    git("init", "-q", "-b", "main")
    git("commit", "-q", "--allow-empty", "-m", "old")
    old = git("rev-parse", "HEAD")
    git("commit", "-q", "--allow-empty", "-m", "new")
    new = git("rev-parse", "HEAD")
    git("update-ref", "refs/remotes/origin/main", new)  # what actions/checkout fetched: main's head now
    for sha, current in ((new, "true"), (old, "false")):
        output = tmp_path / f"output-{current}"
        subprocess.run(["bash", "-e", "-c", guard["run"]], cwd=repo, check=True, capture_output=True,
                       env={**env, "GITHUB_SHA": sha, "GITHUB_OUTPUT": str(output)})  # fmt: skip
        assert output.read_text() == f"current={current}\n"


def test_gitlab_apply_runs_newest_first_and_skips_an_outdated_commit(tmp_path: Path) -> None:
    pipeline = load(GITLAB)
    apply = pipeline["apply"]
    text = GITLAB.read_text(encoding="utf-8")
    assert apply["resource_group"] == "swarm-production"
    assert apply["variables"]["GIT_DEPTH"] == "0"
    # newest_first is an API setting of the resource group, and outdated-job prevention a project
    # setting: both are spelled out for the operator, in the recipe and in the README
    for document in (text, DOCS.read_text(encoding="utf-8")):
        assert "process_mode=newest_first" in document and "resource_groups/swarm-production" in document
        assert "Prevent outdated deployment jobs" in document
    for words in ("Protected", 'restrict,command="docker system dial-stdio"', "environment `production`"):
        assert words in text, words

    # the guard, against a real remote: an outdated commit is skipped before swarm-secrets runs
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip
    origin, work = tmp_path / "origin.git", tmp_path / "work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    subprocess.run(["git", "clone", "-q", str(origin), str(work)], check=True, capture_output=True)
    shas = []
    for message in ("old", "new"):
        subprocess.run(["git", "-C", str(work), "commit", "-q", "--allow-empty", "-m", message],
                       env=env, check=True)  # fmt: skip
        shas.append(subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True,
                                   text=True, check=True).stdout.strip())  # fmt: skip
    subprocess.run(["git", "-C", str(work), "push", "-q", "origin", "main"], check=True, capture_output=True)
    script = "\n".join(_items(apply["script"]))
    for sha, applied in ((shas[1], True), (shas[0], False)):
        done = subprocess.run(
            ["sh", "-e", "-c", script], cwd=work, capture_output=True, text=True, check=False,
            env={**env, **_fake_cli(tmp_path / sha, 0), "CI_DEFAULT_BRANCH": "main", "CI_COMMIT_SHA": sha},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert ("fake plan" in done.stdout) is applied, done.stdout
