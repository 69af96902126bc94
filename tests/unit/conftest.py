"""Fixtures for unit tests that need real sops encryption: fresh age keys and an ``encrypt`` helper.

Keys are generated per test session with ``age-keygen`` (Debian package ``age``) and files are
encrypted with the same sops binary the reconciler runs, so the tests exercise real sops behaviour
(exit codes, formats, stderr) rather than a mock of it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.sources.sops import FORMATS, find_sops


@dataclass(frozen=True, slots=True)
class AgeKey:
    path: Path
    """The identity file (private key), for SOPS_AGE_KEY_FILE."""
    recipient: str
    """The public key, for ``sops --encrypt --age``."""


Encrypt = Callable[[Path, Path, AgeKey], None]
"""encrypt(plaintext file, encrypted file to write, key)."""


def _clean_environ() -> dict[str, str]:
    # Keys or a sops override from the developer's shell must not leak into tests.
    drop = {
        "SOPS_AGE_KEY",
        "SOPS_AGE_KEY_FILE",
        "SOPS_AGE_KEY_CMD",
        "SOPS_AGE_SSH_PRIVATE_KEY_FILE",
        "SWARM_SECRETS_SOPS",
    }
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(scope="session")
def sops_binary() -> str:
    return find_sops(_clean_environ())


def _new_key(folder: Path, name: str) -> AgeKey:
    path = folder / f"{name}.agekey"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True)
    return AgeKey(path=path, recipient=recipient.stdout.strip())


@pytest.fixture(scope="session")
def age_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[AgeKey, AgeKey]:
    """Two fresh age keys: the one tests decrypt with, and another one nobody has."""
    if shutil.which("age-keygen") is None:
        pytest.skip(
            "age-keygen is not installed (Debian/Ubuntu: apt-get install -y age); "
            "sops tests need it to make a throwaway key"
        )
    folder = tmp_path_factory.mktemp("age")
    return _new_key(folder, "main"), _new_key(folder, "other")


@pytest.fixture(scope="session")
def age_key(age_keys: tuple[AgeKey, AgeKey]) -> AgeKey:
    return age_keys[0]


@pytest.fixture(scope="session")
def other_age_key(age_keys: tuple[AgeKey, AgeKey]) -> AgeKey:
    return age_keys[1]


@pytest.fixture(scope="session")
def encrypt(sops_binary: str) -> Encrypt:
    """Encrypt a plaintext file to ``key`` with the real sops; the format follows the target's suffix."""

    def run(plain: Path, target: Path, key: AgeKey) -> None:
        kind = FORMATS.get(target.suffix.lower(), "binary")
        subprocess.run(
            [
                sops_binary,
                "--encrypt",
                "--age",
                key.recipient,
                "--input-type",
                kind,
                "--output-type",
                kind,
                "--output",
                str(target),
                str(plain),
            ],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env=_clean_environ(),
            cwd=plain.parent,  # away from any .sops.yaml of the checkout
        )

    return run


@pytest.fixture
def sops_environ(age_key: AgeKey) -> Mapping[str, str]:
    """An environment for resolve() that decrypts with ``age_key`` and nothing else."""
    return {**_clean_environ(), "SOPS_AGE_KEY_FILE": str(age_key.path)}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo the root-logger handler and level a CLI invocation installs."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
