"""Where the fingerprint key comes from.

In order:

1. ``--fingerprint-key-file`` / ``SWARM_SECRETS_FINGERPRINT_KEY_FILE``: a file of at least 16 bytes
   (e.g. ``head -c 32 /dev/urandom``, or ``openssl rand -hex 32``: one trailing newline is ignored).
   Use this when several swarms must agree, or to keep the key off the swarm.
2. Otherwise the Docker config ``swarm-secrets-fingerprint-key`` on the swarm itself, created with 32
   random bytes by the first run that finds none. Every reconciler of one swarm (a CI job, the loop
   service) then agrees on the key without any set-up. Configs are readable by whoever can call the
   manager API; such a person can already run a container that mounts every secret, so this keeps the
   labels opaque to everyone else (pull-request readers, monitoring exports of labels) without adding
   a new trust boundary.

A run that races another to create the config loses with a conflict and reads the winner's key.
"""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.core.fingerprint import check_key
from reconciler.core.model import LABEL_MANAGED, LABEL_PREFIX
from reconciler.engine.protocol import Swarm
from reconciler.errors import ConfigError, SwarmConflict

KEY_CONFIG_NAME = "swarm-secrets-fingerprint-key"
KEY_BYTES = 32


def read_key_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the fingerprint key file {path}: {exc.strerror}") from None
    if data.endswith(b"\n"):
        data = data[:-1]
    return check_key(data)


def find_key(swarm: Swarm, key_file: Path | None) -> bytes | None:
    """The fingerprint key from ``key_file`` or the swarm's config; None when neither exists yet
    (nothing is created: callers check what they must before the first write)."""
    if key_file is not None:
        return read_key_file(key_file)
    found = swarm.find_config(KEY_CONFIG_NAME)
    return check_key(found[1]) if found is not None else None


def load_key(swarm: Swarm, key_file: Path | None, *, create: bool = True) -> bytes:
    """The fingerprint key: from ``key_file`` if given, else from (or into) the swarm's config.

    With ``create=False`` (``plan``: it must not write to the swarm) a swarm without the config gets a
    throwaway key for this run. Nothing was ever applied there with the config's key, so nothing can
    be compared with it anyway: every secret plans as new (or as "fingerprint key changed").
    """
    if key_file is not None:
        return read_key_file(key_file)
    found = swarm.find_config(KEY_CONFIG_NAME)
    if found is not None:
        return check_key(found[1])
    if not create:
        return os.urandom(KEY_BYTES)
    labels = {LABEL_MANAGED: "true", LABEL_PREFIX + "purpose": "fingerprint-key"}
    try:
        swarm.create_config(KEY_CONFIG_NAME, os.urandom(KEY_BYTES), labels)
    except SwarmConflict:
        pass  # another run created it first: use theirs
    found = swarm.find_config(KEY_CONFIG_NAME)
    if found is None:
        raise ConfigError(f"the Docker config {KEY_CONFIG_NAME} vanished right after it was created")
    return check_key(found[1])
