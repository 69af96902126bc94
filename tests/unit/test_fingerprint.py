"""Keyed fingerprints: change detection that confirms nothing to someone without the key."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from reconciler.core.desired import build_desired
from reconciler.core.fingerprint import Fingerprinter, check_key, fingerprint, fingerprint_key_id, key_id
from reconciler.core.model import EnvSource, Origin, SecretSet, SecretSpec, SecretValue
from reconciler.engine.keysource import read_key_file
from reconciler.errors import ConfigError

KEY = b"k" * 32
OTHER = b"o" * 32


def test_fingerprint_is_keyed_and_stable() -> None:
    value = SecretValue(b"hunter2")
    fp = fingerprint(KEY, value)
    assert fp == fingerprint(KEY, SecretValue(b"hunter2"))
    assert fp != fingerprint(KEY, SecretValue(b"hunter3"))
    assert fp != fingerprint(OTHER, value)
    scheme, kid, digest = fp.split(":")
    assert (scheme, kid) == ("hmac-sha256", key_id(KEY))
    assert fingerprint_key_id(fp) == key_id(KEY)


@pytest.mark.parametrize(
    "key",
    [KEY, b"0123456789abcdef", bytes(range(64)), bytes(range(65)), b"\xff" * 200],
    ids=["32 bytes", "16 bytes", "one block", "longer than a block", "200 bytes"],
)
def test_fingerprinter_is_hmac_sha256(key: bytes) -> None:
    fingerprinter = Fingerprinter(key)
    assert fingerprinter.kid == key_id(key)
    for value in (b"", b"hunter2", b"\x00" * 64, bytes(range(256)) * 40):
        expected = f"hmac-sha256:{key_id(key)}:{hmac.new(key, value, hashlib.sha256).hexdigest()}"
        assert fingerprinter(SecretValue(value)) == expected
        assert fingerprint(key, SecretValue(value)) == expected


def test_fingerprint_reveals_no_plain_hash_of_the_value() -> None:
    value = b"hunter2"
    fp = fingerprint(KEY, SecretValue(value))
    assert value.decode() not in fp
    for algorithm in ("md5", "sha1", "sha224", "sha256", "sha512"):
        plain = hashlib.new(algorithm, value).hexdigest()
        assert plain[:8] not in fp, algorithm


def test_key_id_says_nothing_about_the_key() -> None:
    assert key_id(KEY) != key_id(OTHER)
    assert hashlib.sha256(KEY).hexdigest()[:12] != key_id(KEY)
    assert len(key_id(KEY)) == 12


@pytest.mark.parametrize(
    "label", [None, "", "sha256:abc", "hmac-sha256:", "hmac-sha256::abc", "hmac-sha256:k:"]
)
def test_foreign_labels_have_no_key_id(label: str | None) -> None:
    assert fingerprint_key_id(label) is None


def test_short_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        check_key(b"short")
    path = tmp_path / "key"
    path.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    assert read_key_file(path) == b"0123456789abcdef0123456789abcdef"  # one trailing newline ignored
    with pytest.raises(ConfigError, match="cannot read"):
        read_key_file(tmp_path / "missing")


def test_desired_state_carries_fingerprints_not_values() -> None:
    spec = SecretSpec(
        set_name="shop",
        secret="pw",
        source=EnvSource(var="PW"),
        origin=Origin(file="m.yaml", line=1, path=""),
    )
    sets = (SecretSet(name="shop", secrets=(spec,), origin=Origin(file="m.yaml", line=1, path="")),)
    desired = build_desired(sets, {("shop", "pw"): SecretValue(b"hunter2")}, KEY, revision="abc")
    (secret,) = desired.sets[0].secrets
    assert secret.fingerprint == fingerprint(KEY, SecretValue(b"hunter2"))
    assert desired.fingerprint_key_id == key_id(KEY)
    assert "hunter2" not in repr(desired)


def test_secret_value_never_shows_itself() -> None:
    value = SecretValue(b"hunter2")
    # "%s" is how logging formats its arguments
    for text in (repr(value), str(value), f"{value}", f"{value!r}", "%s" % (value,)):  # noqa: UP031
        assert "hunter2" not in text
    with pytest.raises(TypeError):
        hash(value)
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(value)
