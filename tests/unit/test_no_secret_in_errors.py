"""No secret in any error text: marker values planted wherever a value could travel (a plaintext
``.env`` passed as a sops source, symlinks to a key file inside and outside the repository, damaged
and malformed encrypted files, the reconciler's own variables) appear in no output of ``validate``,
not even at debug level, in-process or as a real process; and sops's and git's own words never do.

The real sops binary and real age keys; the swarm side (plan, apply, run's /readyz and /metrics) is in
``tests/integration/test_trust_boundary.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.daemon.gitsync import GitSettings, GitSync
from tests.unit.conftest import AgeKey, Encrypt

pytestmark = pytest.mark.usefixtures("restore_logging")

MARKERS = {
    "env": "MARKER-plain-env-5c1e",
    "outside": "AGE-SECRET-KEY-1MARKEROUTSIDE",
    "inside": "AGE-SECRET-KEY-1MARKERINSIDE",
    "mac": "MARKER-mac-mismatch-77a0",
    "damaged": "MARKER-damaged-value-91b2",
    "truncated": "MARKER-truncated-3d4f",
    "variable": "MARKER-reconciler-variable-0e6a",
}


def _repo(tmp_path: Path, encrypt: Encrypt, key: AgeKey) -> Path:
    """A repository holding one of each poisoned source, and the outside key file one points at."""
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    secrets = repo / "secrets"
    secrets.mkdir()
    (tmp_path / "host.agekey").write_text(f"# public key: age1x\n{MARKERS['outside']}\n")
    (repo / "keys.agekey").write_text(f"# public key: age1y\n{MARKERS['inside']}\n")
    (secrets / "plain.env").write_text(f"DB_PASSWORD={MARKERS['env']}\nNOT A LINE {MARKERS['env']}\n")
    (secrets / "outside.enc.env").symlink_to(tmp_path / "host.agekey")
    (secrets / "inside.enc.env").symlink_to(repo / "keys.agekey")
    # MAC mismatch: an entry removed from a real encrypted file
    plain = tmp_path / "mac.yaml"
    plain.write_text(f"a: {MARKERS['mac']}\nb: {MARKERS['mac']}-2\n")
    encrypt(plain, secrets / "mac.enc.yaml", key)
    doc = yaml.safe_load((secrets / "mac.enc.yaml").read_text())
    del doc["b"]
    (secrets / "mac.enc.yaml").write_text(yaml.safe_dump(doc))
    # a damaged value: two encrypted values swapped (each decrypts only where it was written)
    plain.write_text(f"a: {MARKERS['damaged']}\nb: {MARKERS['damaged']}-2\n")
    encrypt(plain, secrets / "damaged.enc.yaml", key)
    doc = yaml.safe_load((secrets / "damaged.enc.yaml").read_text())
    doc["a"], doc["b"] = doc["b"], doc["a"]
    (secrets / "damaged.enc.yaml").write_text(yaml.safe_dump(doc))
    # truncated in the middle: not parseable any more
    plain.write_text(f"a: {MARKERS['truncated']}\n")
    encrypt(plain, secrets / "truncated.enc.yaml", key)
    text = (secrets / "truncated.enc.yaml").read_text()
    (secrets / "truncated.enc.yaml").write_text(text[: len(text) // 2] + "\n  - [unclosed")
    plain.unlink()  # as in a real repository: only encrypted files remain
    sources = {
        "plain_env": {"sops": {"file": "../secrets/plain.env", "key": "DB_PASSWORD"}},
        "outside_key": {"sops": {"file": "../secrets/outside.enc.env"}},
        "inside_key": {"sops": {"file": "../secrets/inside.enc.env"}},
        "outside_file": {"file": "../secrets/outside.enc.env"},
        "mac": {"sops": {"file": "../secrets/mac.enc.yaml", "key": "a"}},
        "damaged": {"sops": {"file": "../secrets/damaged.enc.yaml", "key": "a"}},
        "truncated": {"sops": {"file": "../secrets/truncated.enc.yaml", "key": "a"}},
    }
    manifest = {
        "apiVersion": "swarm-secrets/v1",
        "kind": "SecretSet",
        "metadata": {"name": "poisoned"},
        "spec": {"secrets": {name: {"source": source} for name, source in sources.items()}},
    }
    (repo / "manifests").mkdir()
    (repo / "manifests" / "set.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    (repo / "manifests" / "own.yaml").write_text(
        "apiVersion: swarm-secrets/v1\nkind: SecretSet\nmetadata: {name: own}\n"
        "spec:\n  secrets:\n    own_age: {source: {env: SOPS_AGE_KEY}}\n"
    )
    return repo


def _assert_clean(text: str) -> None:
    for name, marker in MARKERS.items():
        assert marker not in text, f"marker {name} leaked"
    for quoted in ("invalid dotenv", "Error unmarshalling", "MAC mismatch. File has", "cannot unmarshal"):
        assert quoted not in text, f"sops's own words: {quoted}"


def _environ(sops_environ: Mapping[str, str]) -> dict[str, str]:
    return {**sops_environ, "SOPS_AGE_KEY": MARKERS["variable"]}


def test_boundary_first_then_fixed_sops_messages(
    tmp_path: Path, encrypt: Encrypt, age_key: AgeKey, sops_environ: Mapping[str, str]
) -> None:
    repo = _repo(tmp_path, encrypt, age_key)
    env: dict[str, str | None] = {**_environ(sops_environ), "SWARM_SECRETS_SOPS": None}
    args = ["--log-level", "debug", "validate", str(repo / "manifests")]
    # The boundary is checked before any source is read: the reserved variable and the symlinks out of
    # the repository are refused, and nothing was decrypted.
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 1
    _assert_clean(result.output)
    problems = [line for line in result.stderr.splitlines() if ": spec." in line]
    assert len(problems) == 3, result.stderr
    assert (
        "own.yaml:6: spec.secrets.own_age.source.env: environment variable SOPS_AGE_KEY belongs to"
        in problems[0]
    )
    assert (
        "outside_key.source.sops.file: ../secrets/outside.enc.env is outside the source root" in problems[1]
    )
    assert "outside_file.source.file: ../secrets/outside.enc.env is outside the source root" in problems[2]
    assert "decrypting" not in result.stderr  # sops never ran

    # Without those, every sops failure is one fixed line, at debug level too.
    (repo / "manifests" / "own.yaml").unlink()
    set_file = repo / "manifests" / "set.yaml"
    doc = yaml.safe_load(set_file.read_text())
    del doc["spec"]["secrets"]["outside_key"], doc["spec"]["secrets"]["outside_file"]
    set_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 1
    _assert_clean(result.output)
    lines = [line for line in result.stderr.splitlines() if ": spec." in line]
    expected = {
        "plain_env": "(exit 1: it is not readable as dotenv",
        "inside_key": "(exit 1: it is not readable as dotenv",
        "mac": "(exit 51: MAC mismatch: the file was changed without sops",
        "damaged": "(exit 25: a value does not decrypt: the file is damaged",
        "truncated": "(exit 1: it is not readable as YAML",
    }
    assert len(lines) == len(expected), result.stderr
    for line, (name, reason) in zip(lines, expected.items(), strict=True):
        assert f"spec.secrets.{name}.source.sops.file: sops could not decrypt" in line and reason in line, (
            line
        )


def test_a_real_process_at_debug_level_with_json_logs(
    tmp_path: Path, encrypt: Encrypt, age_key: AgeKey, sops_environ: Mapping[str, str]
) -> None:
    repo = _repo(tmp_path, encrypt, age_key)
    (repo / "manifests" / "own.yaml").unlink()
    env = {**_environ(sops_environ), "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("SWARM_SECRETS_SOPS", None)
    for offline in ([], ["--offline"]):
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", "--log-level", "debug", "--log-format", "json", "validate",
             *offline, str(repo / "manifests")],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        _assert_clean(done.stdout + done.stderr)
        for line in done.stderr.splitlines():
            if line.startswith("{"):
                json.loads(line)  # log records stay JSON lines
    # nothing of a value was left in the temp folder either (sops writes to our pipe only)
    for path in tmp_path.rglob("*"):
        if (
            path.is_file()
            and not path.is_symlink()
            and path.suffix not in (".agekey",)
            and "secrets" not in path.parts
        ):
            _assert_clean(path.read_text(errors="replace"))


def test_git_output_is_never_echoed(tmp_path: Path) -> None:
    sync = GitSync(GitSettings(url="file:///nowhere/repo.git", checkout_dir=tmp_path / "co", ref="main"))
    hostile = (
        "remote: Counting objects: MARKER-from-the-server\n"
        "fatal: unable to access 'https://u:pw@h/r': Could not resolve host: h MARKER-dns\n"
    )
    error = sync._error("git fetch", 128, hostile)
    assert str(error) == "git fetch: cannot resolve the git server's host name" and error.transient
    unknown = sync._error("git fetch", 2, "fatal: something new MARKER-unknown\n")
    assert str(unknown) == "git fetch: git failed (exit 2)"
    assert "MARKER" not in str(error) + str(unknown)
    for stderr, expected, transient in [
        ("fatal: couldn't find remote ref nope", "ref 'main' not found in the repository", False),
        ("git@h: Permission denied (publickey).", "the server refused the ssh key", False),
        ("Host key verification failed.", "the server's ssh host key is unknown or changed", False),
        ("fatal: Authentication failed for 'https://h/r'", "the server refused the credentials", False),
        ("remote: Repository not found.", "repository not found, or no read access", False),
        ("fatal: unable to access: Failed to connect to h port 443", "cannot reach the git server", True),
        ("SSL certificate problem: self signed", "TLS failed with the git server", False),
    ]:
        failure = sync._error("git fetch", 128, stderr)
        assert str(failure) == f"git fetch: {expected}" or str(failure).startswith(f"git fetch: {expected}")
        assert failure.transient is transient
