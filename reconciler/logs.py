"""Log formatting for the long-running service, and the audit-event helper.

* :class:`JsonFormatter` writes one JSON object per line: ``ts``, ``level``, ``logger``, ``message``,
  every ``extra=`` field of the record, and ``exc`` when a traceback is attached.
* :class:`TextFormatter` writes ``ts LEVEL logger: message key=value …`` for people at a terminal.
* :func:`audit` logs one structured INFO record on the ``reconciler.audit`` logger: what the tool
  changed (set, secret, versions, services, revision) and which swarm-secrets version did it
  (``tool_version``), never a value.

This module must not configure logging (the CLI installs handlers and picks a formatter) and must
never render secret bytes: :func:`audit` drops fields named like a value and any field that holds a
:class:`~reconciler.core.model.SecretValue` or raw bytes; both formatters render bytes as their size only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any

import reconciler
from reconciler.core.model import SecretValue

AUDIT_LOGGER = "reconciler.audit"
"""Name of the logger :func:`audit` writes to; route it to its own handler to keep an audit trail."""

FORBIDDEN_FIELDS = frozenset({"value", "data", "secret_value", "plaintext", "payload"})
"""Audit field names that would only ever be used for a secret's content: always dropped."""

# Every attribute a bare LogRecord has, plus the two the Formatter adds: anything else on a record
# came in through ``extra=`` and is rendered as a field.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}

_audit_log = logging.getLogger(AUDIT_LOGGER)


def _holds_secret(value: object) -> bool:
    """True when ``value`` is, or contains, a SecretValue or raw bytes (which may be a value)."""
    if isinstance(value, SecretValue | bytes | bytearray | memoryview):
        return True
    if isinstance(value, Mapping):
        return any(_holds_secret(k) or _holds_secret(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_holds_secret(v) for v in value)
    return False


def _plain(value: object) -> Any:
    """A JSON-ready copy of ``value``; anything exotic becomes its ``str`` (SecretValue's is safe)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        # Bytes in a log record are most likely a value that slipped through: show the size only.
        return f"<{len(value)} bytes>"
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_plain(v) for v in value), key=str)
    if isinstance(value, PurePath):
        return str(value)
    return str(value)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record, JSON-ready, in the order they were given."""
    return {
        key: _plain(val)
        for key, val in vars(record).items()
        if key not in _RECORD_ATTRS and not key.startswith("_")
    }


def _timestamp(record: logging.LogRecord) -> str:
    when = datetime.fromtimestamp(record.created, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ms), ``level``, ``logger``, ``message``, extra fields,
    and ``exc``/``stack`` text when present. Extra fields never overwrite the four fixed keys."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, val in record_fields(record).items():
            out.setdefault(key, val)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii keeps every line 7-bit clean for log shippers that mangle UTF-8.
        return json.dumps(out, separators=(",", ":"), default=str)


def _text_value(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in '"=' for c in value):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """``2024-05-01T12:00:00.123Z INFO reconciler.daemon.loop: message key=value …`` plus the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        fields = record_fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def audit(event: str, /, **fields: object) -> None:
    """Log one audit record: message ``event``, fields ``event`` and ``fields`` as extras.

    Fields named like a value (:data:`FORBIDDEN_FIELDS`) and fields holding a SecretValue or bytes
    (at any depth) are dropped; their names are listed in ``dropped`` so the omission is visible. A
    field whose name clashes with a LogRecord attribute (``name``, ``module``, …) gets a trailing ``_``.

    Every record also carries ``tool_version``: the swarm-secrets version that made the change, so an
    audit trail shows which release did what (and a caller cannot override it).

    Example: ``audit("secret_created", set="app", secret="db_password", version=3, revision=sha)``.
    """
    extra: dict[str, object] = {"event": event, "tool_version": reconciler.__version__}
    dropped: list[str] = []
    for key, val in fields.items():
        if key.lower() in FORBIDDEN_FIELDS or _holds_secret(val):
            dropped.append(key)
            continue
        extra[f"{key}_" if key in _RECORD_ATTRS or key in extra else key] = val
    if dropped:
        extra["dropped"] = tuple(dropped)
    _audit_log.info(event, extra=extra)
