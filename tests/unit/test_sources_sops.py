"""The sops source against the real sops binary and fresh age keys (no mocks of subprocess)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import pytest

from reconciler.core.model import Origin, SecretSet, SecretSpec, SecretValue, SopsSource, Source
from reconciler.errors import SourceError
from reconciler.sources import resolve
from reconciler.sources import sops as sops_module
from reconciler.sources.sops import SOPS_ENV
from tests.unit.conftest import AgeKey, Encrypt

SECRET_YAML = b"db:\n  password: hunter2-yaml\n  port: 5432\n  ssl: true\nhost.name: db.internal\n"
SECRET_JSON = b'{"db": {"password": "hunter2-json", "port": 5432}, "flags": [1, 2]}\n'
SECRET_ENV = b"DB_PASSWORD=hunter2-env\nMULTI=line1\\nline2\n"
SECRET_BIN = bytes(range(256)) * 4
VALUES = (b"hunter2-yaml", b"hunter2-json", b"hunter2-env", b"db.internal")


def _sets(sources: Mapping[str, Source]) -> tuple[SecretSet, ...]:
    specs = tuple(
        SecretSpec(
            set_name="t",
            secret=name,
            source=source,
            origin=Origin(file="t.yaml", line=i + 10, path=f"spec.secrets.{name}"),
        )
        for i, (name, source) in enumerate(sources.items())
    )
    return (SecretSet(name="t", secrets=specs, origin=Origin(file="t.yaml", line=4, path="metadata.name")),)


@pytest.fixture
def encrypted(tmp_path: Path, encrypt: Encrypt, age_key: AgeKey) -> dict[str, Path]:
    """The four formats, each encrypted to ``age_key``; plaintext files are deleted right after."""
    out = {}
    for suffix, data in {
        ".yaml": SECRET_YAML,
        ".json": SECRET_JSON,
        ".env": SECRET_ENV,
        ".bin": SECRET_BIN,
    }.items():
        plain = tmp_path / f"plain{suffix}"
        plain.write_bytes(data)
        target = tmp_path / f"secret.enc{suffix}"
        encrypt(plain, target, age_key)
        plain.unlink()
        out[suffix] = target
    return out


def _one(source: Source, environ: Mapping[str, str]) -> bytes:
    return resolve(_sets({"s": source}), environ)[("t", "s")].reveal()


def test_whole_file_is_byte_for_byte(encrypted: dict[str, Path], sops_environ: Mapping[str, str]) -> None:
    assert _one(SopsSource(file=encrypted[".bin"]), sops_environ) == SECRET_BIN
    assert _one(SopsSource(file=encrypted[".env"]), sops_environ) == SECRET_ENV


@pytest.mark.parametrize(
    ("suffix", "key", "expected"),
    [
        (".yaml", ("db", "password"), b"hunter2-yaml"),
        (".yaml", ("db", "port"), b"5432"),
        (".yaml", ("db", "ssl"), b"true"),
        (".yaml", ("host.name",), b"db.internal"),  # the list form, for keys with dots
        (".json", ("db", "password"), b"hunter2-json"),
        (".json", ("db", "port"), b"5432"),
        (".env", ("DB_PASSWORD",), b"hunter2-env"),
        (".env", ("MULTI",), b"line1\nline2"),
    ],
)
def test_key_extraction(
    encrypted: dict[str, Path],
    sops_environ: Mapping[str, str],
    suffix: str,
    key: tuple[str, ...],
    expected: bytes,
) -> None:
    assert _one(SopsSource(file=encrypted[suffix], key=key), sops_environ) == expected


def test_ini_section_key(
    tmp_path: Path, encrypt: Encrypt, age_key: AgeKey, sops_environ: Mapping[str, str]
) -> None:
    plain = tmp_path / "plain.ini"
    plain.write_text("[database]\nPassword = hunter2-ini\n")
    encrypt(plain, tmp_path / "s.enc.ini", age_key)
    value = _one(SopsSource(file=tmp_path / "s.enc.ini", key=("database", "Password")), sops_environ)
    assert value == b"hunter2-ini"


def _problems(sources: Mapping[str, Source], environ: Mapping[str, str]) -> list[str]:
    with pytest.raises(SourceError) as caught:
        resolve(_sets(sources), environ)
    return [str(p) for p in caught.value.problems]


def test_missing_key_lists_key_names_not_values(
    encrypted: dict[str, Path], sops_environ: Mapping[str, str]
) -> None:
    [problem] = _problems({"s": SopsSource(file=encrypted[".yaml"], key=("db", "passwd"))}, sops_environ)
    assert problem.startswith("t.yaml:10: spec.secrets.s.source.sops.key: key db.passwd not found in ")
    assert "no 'passwd' under db; available keys there: password, port, ssl" in problem
    for value in VALUES:
        assert value.decode() not in problem


def test_missing_top_level_key(encrypted: dict[str, Path], sops_environ: Mapping[str, str]) -> None:
    [problem] = _problems({"s": SopsSource(file=encrypted[".json"], key=("nope",))}, sops_environ)
    assert "under the top level; available keys there: db, flags" in problem


@pytest.mark.parametrize(("key", "what"), [(("db",), "a mapping"), (("flags",), "a list")])
def test_non_scalar_key(
    encrypted: dict[str, Path], sops_environ: Mapping[str, str], key: tuple[str, ...], what: str
) -> None:
    [problem] = _problems({"s": SopsSource(file=encrypted[".json"], key=key)}, sops_environ)
    assert f"is {what}, not a single value" in problem
    assert "hunter2" not in problem


def test_key_in_binary_file_is_refused(encrypted: dict[str, Path], sops_environ: Mapping[str, str]) -> None:
    [problem] = _problems({"s": SopsSource(file=encrypted[".bin"], key=("a",))}, sops_environ)
    assert "decrypts as binary data, which has no keys" in problem


def test_wrong_key_explains_exit_128(
    tmp_path: Path, encrypt: Encrypt, other_age_key: AgeKey, sops_environ: Mapping[str, str]
) -> None:
    plain = tmp_path / "p.yaml"
    plain.write_bytes(SECRET_YAML)
    encrypt(plain, tmp_path / "theirs.enc.yaml", other_age_key)
    [problem] = _problems(
        {"s": SopsSource(file=tmp_path / "theirs.enc.yaml", key=("db", "password"))}, sops_environ
    )
    assert "theirs.enc.yaml" in problem
    assert "spec.secrets.s.source.sops.file" in problem
    assert "(exit 128: no key could decrypt it: the key sops was given" in problem
    assert "is not one of the file's recipients" in problem
    assert "SOPS_AGE_KEY_FILE" in problem
    assert "\n" not in problem


def test_not_encrypted_file(tmp_path: Path, sops_environ: Mapping[str, str]) -> None:
    (tmp_path / "plain.yaml").write_bytes(SECRET_YAML)
    [problem] = _problems(
        {"s": SopsSource(file=tmp_path / "plain.yaml", key=("db", "password"))}, sops_environ
    )
    assert "not a sops-encrypted file" in problem
    assert "hunter2" not in problem


def test_missing_encrypted_file(tmp_path: Path, sops_environ: Mapping[str, str]) -> None:
    [problem] = _problems({"s": SopsSource(file=tmp_path / "nope.enc.yaml")}, sops_environ)
    assert "nope.enc.yaml does not exist" in problem


def _counting_sops(tmp_path: Path, sops_binary: str) -> tuple[Path, Path]:
    """A wrapper that records each run in a counter file, then execs the real sops."""
    counter = tmp_path / "runs"
    script = tmp_path / "sops-wrapper"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{counter}"\nexec "{sops_binary}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, counter


def test_one_sops_process_per_file(
    tmp_path: Path, encrypted: dict[str, Path], sops_binary: str, sops_environ: Mapping[str, str]
) -> None:
    script, counter = _counting_sops(tmp_path, sops_binary)
    environ = {**sops_environ, SOPS_ENV: str(script)}
    yaml_file, json_file = encrypted[".yaml"], encrypted[".json"]
    values = resolve(
        _sets(
            {
                "a": SopsSource(file=yaml_file, key=("db", "password")),
                "b": SopsSource(file=yaml_file, key=("db", "port")),
                "c": SopsSource(file=yaml_file, key=("host.name",)),
                "d": SopsSource(file=yaml_file),
                "e": SopsSource(file=json_file, key=("db", "password")),
                "f": SopsSource(file=json_file, key=("db", "port")),
            }
        ),
        environ,
    )
    assert len(values) == 6
    runs = counter.read_text().splitlines()
    assert sorted(run.split()[-1] for run in runs) == sorted([str(yaml_file), str(json_file)])
    # sops's argument lists (visible to every user of the machine) hold paths, never a value
    for value in values.values():
        assert value.reveal().decode() not in counter.read_text()


def test_failed_file_is_not_decrypted_twice(
    tmp_path: Path, encrypted: dict[str, Path], sops_binary: str, other_age_key: AgeKey
) -> None:
    script, counter = _counting_sops(tmp_path, sops_binary)
    environ = {**os.environ, "SOPS_AGE_KEY_FILE": str(other_age_key.path), SOPS_ENV: str(script)}
    environ.pop("SOPS_AGE_KEY", None)
    problems = _problems(
        {
            "a": SopsSource(file=encrypted[".yaml"], key=("db", "password")),
            "b": SopsSource(file=encrypted[".yaml"], key=("db", "port")),
        },
        environ,
    )
    assert len(problems) == 2
    assert len(counter.read_text().splitlines()) == 1


def test_no_value_in_logs_errors_or_repr(
    encrypted: dict[str, Path], sops_environ: Mapping[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    values = resolve(
        _sets(
            {
                "a": SopsSource(file=encrypted[".yaml"], key=("db", "password")),
                "b": SopsSource(file=encrypted[".json"], key=("db", "password")),
                "c": SopsSource(file=encrypted[".env"], key=("DB_PASSWORD",)),
            }
        ),
        sops_environ,
    )
    with pytest.raises(SourceError) as caught:
        resolve(
            _sets(
                {
                    "x": SopsSource(file=encrypted[".yaml"], key=("db", "password", "deeper")),
                    "y": SopsSource(file=encrypted[".yaml"], key=("db",)),
                }
            ),
            sops_environ,
        )
    texts = [
        caplog.text,
        str(caught.value),
        repr(caught.value),
        repr(values),
        str(values),
        *(f"{v}" for v in values.values()),
    ]
    assert "decrypting" in caplog.text  # the debug log did run
    for value in (*VALUES, b"hunter2"):
        for text in texts:
            assert value.decode() not in text
    assert repr(values[("t", "a")]) == "<SecretValue: 12 bytes>"
    assert isinstance(values[("t", "a")], SecretValue)


def test_sops_override_must_be_executable(
    tmp_path: Path, encrypted: dict[str, Path], sops_environ: Mapping[str, str]
) -> None:
    environ = {**sops_environ, SOPS_ENV: str(tmp_path / "no-such-sops")}
    [problem] = _problems({"s": SopsSource(file=encrypted[".bin"])}, environ)
    assert f"{SOPS_ENV}={tmp_path / 'no-such-sops'} is not an executable file" in problem


def test_failure_messages_are_fixed_and_never_quote_sops() -> None:
    """sops's stderr is searched for a few patterns, never quoted: it can echo its input."""
    marker = b"MARKER-9f2c"
    no_key = (
        b"Failed to get the data key required to decrypt the SOPS file.\n\nGroup 0: FAILED\n"
        b"  age1xyz: FAILED\n    - | failed to load age identities. Did not find keys in\n"
        b"      | locations 'SOPS_AGE_KEY_FILE'. " + marker + b"\n"
    )
    cases = {
        (128, no_key): "no decryption key is configured: set SOPS_AGE_KEY_FILE or SOPS_AGE_KEY",
        (128, b"identity did not match any of the recipients " + marker): "not one of the file's recipients",
        (128, b"failed to parse 'SOPS_AGE_KEY' age identities: malformed " + marker): "is malformed",
        (1, b"sops metadata not found " + marker): "not a sops-encrypted file",
        (51, b"MAC mismatch. File has " + marker): "MAC mismatch: the file was changed without sops",
        (25, b"Could not decrypt with AES_GCM: cipher: message authentication failed " + marker): "damaged",
        (1, b"invalid dotenv input line: " + marker): "not readable as dotenv",
        (1, b"Error unmarshalling input yaml: cannot unmarshal !!str `" + marker + b"`"): "not readable",
        (100, b'cannot operate on non-existent file "' + marker + b'"'): "the file does not exist",
        (203, marker): "the file is already encrypted",
        (77, marker): "unknown error",
    }
    for (code, stderr), expected in cases.items():
        message = sops_module.failure_message("s.enc.env", "dotenv", code, stderr)
        assert expected in message, message
        assert message.startswith(f"sops could not decrypt s.enc.env (exit {code}: ")
        assert "MARKER" not in message and "\n" not in message


def test_sops_gets_a_reduced_environment() -> None:
    environ = {
        "HOME": "/h", "PATH": "/bin", "TMPDIR": "/t", "SOPS_AGE_KEY_FILE": "/k", "GNUPGHOME": "/g",
        "SWARM_SECRETS_SOPS": "/s", "SWARM_SECRETS_WEBHOOK": "w", "GIT_SSH_COMMAND": "ssh -i /key",
        "DOCKER_HOST": "unix:///d", "AWS_SECRET_ACCESS_KEY": "a", "VAULT_TOKEN": "v", "API_TOKEN": "x",
    }  # fmt: skip
    assert sops_module.sops_environment(environ) == {
        "HOME": "/h", "PATH": "/bin", "TMPDIR": "/t", "SOPS_AGE_KEY_FILE": "/k", "GNUPGHOME": "/g",
    }  # fmt: skip
    extra = sops_module.sops_environment(environ, ("AWS_*", "VAULT_TOKEN"))
    assert extra["AWS_SECRET_ACCESS_KEY"] == "a" and extra["VAULT_TOKEN"] == "v"
    assert "GIT_SSH_COMMAND" not in extra and "DOCKER_HOST" not in extra and "API_TOKEN" not in extra


def test_a_stuck_sops_is_stopped(
    tmp_path: Path,
    encrypted: dict[str, Path],
    sops_environ: Mapping[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = tmp_path / "stuck-sops"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sops_module, "TIMEOUT_SECONDS", 0.3)
    [problem] = _problems({"s": SopsSource(file=encrypted[".bin"])}, {**sops_environ, SOPS_ENV: str(script)})
    assert "sops did not finish decrypting" in problem
    assert "secret.enc.bin" in problem


def test_unparsable_decrypted_document(
    tmp_path: Path, encrypt: Encrypt, age_key: AgeKey, sops_environ: Mapping[str, str]
) -> None:
    plain = tmp_path / "multi.yaml"
    plain.write_text("a: hunter2-first\n---\nb: hunter2-second\n")
    encrypt(plain, tmp_path / "multi.enc.yaml", age_key)
    [problem] = _problems({"s": SopsSource(file=tmp_path / "multi.enc.yaml", key=("a",))}, sops_environ)
    assert "multi.enc.yaml is not readable as yaml (line 2) (ComposerError)" in problem
    assert "hunter2" not in problem
