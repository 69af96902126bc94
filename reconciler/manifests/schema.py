"""Validate a document against its JSON Schema (``schemas/manifest.v1.json``, ``schemas/policy.v1.json``)
and explain each failure plainly.

jsonschema's own messages (``{} should be non-empty``, ``'x' does not match '^[a-z0-9]...'``) tell an
operator little. This module turns every validation error into ``(path, message)`` where the message
says what is wrong and what to write instead, chosen by the ``title`` of the failing sub-schema (every
sub-schema an error can come from has one) and the failing keyword.

The schema is found as package data (``reconciler/schemas/`` in a wheel, via hatch force-include) or,
in a source checkout, in ``schemas/`` next to the package.

Two validators read the same schema. A valid document (every document of a steady state) is only
checked by jsonschema-rs, a compiled validator of the same draft: 0.3 ms for a 1,000-secret manifest
where jsonschema takes 46 ms, and it spares the command jsonschema's import (~40 ms). Whatever it
does not accept (an invalid document, a value it cannot take, a pattern its regex engine reads more
strictly than Python's ``re``) goes to jsonschema, whose errors this module explains and whose verdict
decides. So the fast validator can only ever send a document to the slow path, never let one through
that jsonschema would refuse; a unit test holds it to that on the whole bad-manifest corpus.

This module does no I/O besides reading the schema once, and knows nothing about files or lines.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import importlib.resources
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.core.model import MAX_OBJECT_NAME
from reconciler.manifests.yamlload import PathKey

if TYPE_CHECKING:
    import jsonschema
    from jsonschema import Draft202012Validator

SCHEMA_FILE = "manifest.v1.json"
POLICY_SCHEMA_FILE = "policy.v1.json"
STACK_SCHEMA_FILE = "stack.v1.json"

VERSION_ROOM = len("_v") + 4
"""Characters a logical name leaves for its version suffix: ``_v`` and up to 4 digits (``_v9999``)."""
MAX_SECRET_NAME = MAX_OBJECT_NAME - VERSION_ROOM
"""58: the schema's ``maxLength`` for a logical secret name (a unit test keeps the two in step)."""


@functools.cache
def load_schema(file: str = SCHEMA_FILE) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of ``schemas/``, loaded once."""
    packaged = importlib.resources.files("reconciler") / "schemas" / file
    if packaged.is_file():
        text = packaged.read_text(encoding="utf-8")
    else:  # editable install or source checkout: the schema lives at the repository top
        text = (Path(__file__).resolve().parents[2] / "schemas" / file).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def manifest_schema() -> dict[str, Any]:
    """The v1 manifest JSON Schema."""
    return load_schema(SCHEMA_FILE)


def policy_schema() -> dict[str, Any]:
    """The v1 policy JSON Schema."""
    return load_schema(POLICY_SCHEMA_FILE)


def stack_schema() -> dict[str, Any]:
    """The v1 ``kind: Stack`` JSON Schema."""
    return load_schema(STACK_SCHEMA_FILE)


@functools.cache
def _fast_check(file: str) -> Callable[[object], bool]:
    import jsonschema_rs

    return jsonschema_rs.Draft202012Validator(load_schema(file)).is_valid


def fast_valid(data: object, file: str = SCHEMA_FILE) -> bool:
    """Whether the compiled validator accepts ``data`` against schema ``file``. False also when it
    cannot take ``data`` (a YAML date, a non-string key): then only jsonschema can tell."""
    try:
        return _fast_check(file)(data)
    except (ValueError, TypeError, OverflowError):
        return False


@functools.cache
def _validator(file: str) -> Draft202012Validator:
    # Imported here: jsonschema (with attrs, referencing, rpds) is a fifth of the command's start-up,
    # and only validating needs it. Each schema is checked against the draft's metaschema by a unit
    # test, not on every run (12 ms).
    from jsonschema import Draft202012Validator

    return Draft202012Validator(inline_refs(load_schema(file)))


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every ``{"$ref": "#/$defs/NAME"}`` replaced by a copy of that definition.

    The same schema, validated by the same validator, but jsonschema no longer resolves a reference
    (through ``referencing``) each time it enters one: about half of the validation time of a
    1,000-secret manifest. Titles stay on the inlined definitions, so error messages do not change.
    A schema with any other kind of reference, or a recursive one, is returned as it is.
    """
    defs = schema.get("$defs") or {}

    def inline(node: Any, active: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [inline(item, active) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if ref is not None:
            name = ref.removeprefix("#/$defs/") if isinstance(ref, str) else ""
            if len(node) != 1 or name not in defs or "/" in name or name in active:
                raise _NotInlinable
            return inline(defs[name], (*active, name))
        return {key: inline(value, active) for key, value in node.items() if key != "$defs"}

    try:
        inlined: dict[str, Any] = inline(schema, ())
    except _NotInlinable:
        return schema
    return inlined


class _NotInlinable(Exception):
    pass


def schema_problems(data: object, file: str = SCHEMA_FILE) -> list[tuple[PathKey, str]]:
    """Every violation of one document against schema ``file`` as ``(path, friendly message)``,
    deduplicated."""
    if fast_valid(data, file):
        return []
    found: dict[tuple[PathKey, str], None] = {}
    for error in _validator(file).iter_errors(data):
        for problem in _translate(error, _HINTS.get(file, _REQUIRED_HINTS)):
            found.setdefault(problem, None)
    return list(found)


# --- translation -------------------------------------------------------------------------------------


def _translate(error: jsonschema.ValidationError, hints: dict[str, str]) -> Iterable[tuple[PathKey, str]]:
    path: PathKey = tuple(error.absolute_path)
    keyword = str(error.validator)
    instance = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    title = str(schema.get("title", ""))

    if "propertyNames" in error.relative_schema_path:
        # A bad mapping key: jsonschema reports it on the mapping; point at the key itself.
        path = (*path, str(instance))
    if keyword == "required":
        # jsonschema reports each missing field separately, with the whole list; duplicates are dropped
        # by the caller.
        for name in schema.get("required", []):
            if isinstance(instance, dict) and name not in instance:
                yield path, f"missing required field '{name}'{hints.get(name, '')}"
        return
    if keyword == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(schema.get("properties", {}))
        for key in instance:
            if key not in allowed:
                yield (*path, str(key)), _unknown_field(str(key), allowed)
        return
    messages = _FRIENDLY.get(title, {})
    friendly = messages.get(keyword) or messages.get("*")
    yield path, friendly(instance) if friendly else _generic(error)


def _unknown_field(key: str, allowed: list[str]) -> str:
    guess = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f"; did you mean '{guess[0]}'?" if guess else ""
    return f"unknown field '{key}'{hint} (allowed here: {', '.join(allowed)})"


def _generic(error: jsonschema.ValidationError) -> str:
    keyword = str(error.validator)
    value = error.validator_value
    if keyword == "type":
        return f"expected {_a_type(value)}, got {_yaml_type(error.instance)}"
    if keyword == "const":
        return f"must be {value!r}, got {_show(error.instance)}"
    if keyword == "minLength":
        return "must not be empty"
    return f"{_show(error.instance)} is not valid here ({keyword}: {value!r})"


_REQUIRED_HINTS = {
    "apiVersion": ": add `apiVersion: swarm-secrets/v1`",
    "kind": ": add `kind: SecretSet`",
    "metadata": ": add `metadata: {name: <set name>}`",
    "spec": ": add `spec: {secrets: {...}}`",
    "name": ": the set's name (lowercase letters, digits, '-')",
    "secrets": ": the secrets of this set, by name (may be `{}`)",
    "source": ": where the value comes from, one of `sops: {file: ...}`, `file: <path>`, `env: <VARIABLE>`",
    "file": ": the path of the encrypted file, relative to this manifest's folder",
    "service": ": the service name",
    "length": ": how many characters to generate (e.g. `{length: 48, charset: urlsafe}`), or `bytes: N` "
    "for raw random bytes",
    "every": ": how old a version may get, e.g. `every: 90d` (s, m, h, d or w)",
}

_POLICY_HINTS = {
    "apiVersion": ": add `apiVersion: swarm-secrets/v1`",
    "kind": ": add `kind: Policy`",
    "spec": ": add `spec: {rules: [...]}`",
    "rules": ": the list of rules, in order (may be empty: then every set is denied)",
    "sets": ": the set-name globs this rule covers, e.g. [shop, shop-*]",
}

_STACK_HINTS = {
    "apiVersion": ": add `apiVersion: swarm-secrets/v1`",
    "kind": ": add `kind: Stack`",
    "metadata": ": add `metadata: {name: <stack name>}`",
    "spec": ": add `spec: {compose: [stack.yml]}`",
    "name": ": the stack's name (its services are <name>_<service>)",
    "compose": ": the compose files, relative to this manifest's folder, e.g. [stack.yml]",
}

_HINTS = {POLICY_SCHEMA_FILE: _POLICY_HINTS, STACK_SCHEMA_FILE: _STACK_HINTS}

_YAML_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),  # before int: bool is an int in Python
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (dict, "a mapping"),
    (list, "a list"),
    (bytes, "binary data"),
    (datetime.date, "a date"),
    (type(None), "nothing (null)"),
)
_SCHEMA_TYPES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "null": "null",
}


def _yaml_type(value: object) -> str:
    for cls, name in _YAML_TYPES:
        if isinstance(value, cls):
            return name
    return type(value).__name__


def _a_type(schema_type: object) -> str:
    names = schema_type if isinstance(schema_type, list) else [schema_type]
    # "null" is allowed for optional collections only to let `services:` stand empty; not worth saying.
    names = [n for n in names if n != "null"] or names
    return " or ".join(_SCHEMA_TYPES.get(str(n), str(n)) for n in names)


def _show(value: object) -> str:
    """A manifest value for a message (manifests hold no secret values), shortened."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict | list):
        return _yaml_type(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


Message = Callable[[object], str]
"""Builds a friendly message from the offending manifest value."""


def _name_rule(kind: str, rule: str, limit: int) -> dict[str, Message]:
    def bad(value: object) -> str:
        return f"{_show(value)} is not a valid {kind}: use {rule}"

    def too_long(value: object) -> str:
        return f"{kind} {_show(value)} is {len(str(value))} characters; the limit is {limit}"

    return {"pattern": bad, "type": bad, "minLength": bad, "maxLength": too_long}


def _secret_name_too_long(value: object) -> str:
    return (
        f"secret name {_show(value)} is {len(str(value))} characters, too long: versions are named "
        f"'<name>_v<N>' and Swarm allows {MAX_OBJECT_NAME} characters, so with room for '_v9999' "
        f"a name can have at most {MAX_SECRET_NAME} (len(name) + len('_v') + 4 <= {MAX_OBJECT_NAME}); "
        "shorten it"
    )


def _mode(value: object) -> str:
    shown = oct(value) if isinstance(value, int) and not isinstance(value, bool) else _show(value)
    return (
        f"{shown} is not an octal mode: use a quoted octal string from '0000' to '0777' such as "
        "'0440' (setuid, setgid and sticky bits are not allowed)"
    )


def _key_path(value: object) -> str:
    return (
        f"{_show(value)} is not a valid key path: write keys separated by single dots (db.password), "
        "or a list of keys ([db, host.name]) when a key contains dots"
    )


def _too_many_sources(value: object) -> str:
    found = ", ".join(map(str, value)) if isinstance(value, dict) else "several"
    return f"source needs exactly one of sops, file, env, generate; found {found}: keep one"


def _generated_size(field: str, unit: str, value: object) -> str:
    return (
        f"{field} must be a whole number of {unit} from 16 to 511999, got {_show(value)}: a generated "
        "secret nobody types need not be short (48 urlsafe characters are 288 bits), and Swarm takes "
        "values under 500 KiB"
    )


_NAME_CHARS = "letters, digits, '_', '.', '-', starting with a letter or digit"
_SET_CHARS = "lowercase letters, digits and '-', starting with a letter or digit"

# title of the failing sub-schema -> failing keyword ("*": any other) -> message
_FRIENDLY: dict[str, dict[str, Message]] = {
    "set name": _name_rule("set name", _SET_CHARS, 40),
    "secret name": {
        **_name_rule("secret name", _NAME_CHARS, MAX_SECRET_NAME),
        "maxLength": _secret_name_too_long,
    },
    "service name": _name_rule("service name", _NAME_CHARS, 63),
    "keep": {
        "*": lambda v: f"keep must be an integer >= 0 (how many superseded versions to keep), got {_show(v)}",
    },
    "secret": {
        "type": lambda v: (
            "a secret must be a mapping with `source` (and optionally `labels`, `services`); "
            f"got {_yaml_type(v)}"
        ),
    },
    "source": {
        "minProperties": lambda v: "source needs exactly one of sops, file, env, generate; found none",
        "maxProperties": _too_many_sources,
        "type": lambda v: (
            f"source must be a mapping with exactly one of sops, file, env, generate; got {_yaml_type(v)}"
        ),
    },
    "generator": {
        "type": lambda v: (
            "generate must be a mapping like {length: 48, charset: urlsafe} or {bytes: 32}; "
            f"got {_yaml_type(v)}"
        ),
    },
    "generator kind": {
        "*": lambda v: "generate takes either length (with an optional charset) or bytes, not both: keep one",
    },
    "generated length": {"*": lambda v: _generated_size("length", "characters", v)},
    "generated bytes": {"*": lambda v: _generated_size("bytes", "bytes", v)},
    "charset": {
        "*": lambda v: (
            f"charset {_show(v)} is not one of alnum, hex, base64, urlsafe, printable "
            "(default alnum; for raw bytes use `bytes: N` instead of length)"
        ),
    },
    "rotate": {
        "type": lambda v: f"rotate must be a mapping like {{every: 90d}}; got {_yaml_type(v)}",
    },
    "rotation period": {
        "*": lambda v: (
            f"{_show(v)} is not a rotation period: write a whole number and a unit, s, m, h, d or w "
            "(90d, 12h, 30m)"
        ),
    },
    "sops source": {
        "type": lambda v: (
            f"sops must be a mapping like {{file: x.enc.yaml, key: db.password}}; got {_yaml_type(v)}"
        ),
    },
    "key path": {
        "minItems": lambda v: "key list must not be empty; omit `key` to take the whole decrypted file",
        "*": _key_path,
    },
    "file path": {
        "*": lambda v: "must be a path relative to this manifest's folder, and not empty",
    },
    "variable name": {
        "*": lambda v: (
            f"{_show(v)} is not an environment variable name: use letters, digits and '_', "
            "not starting with a digit"
        ),
    },
    "services": {
        "type": lambda v: f"services must be a list of service names or mappings; got {_yaml_type(v)}",
    },
    "service grant": {
        "type": lambda v: (
            "a service entry is a service name or a mapping with service, target, uid, gid, mode; "
            f"got {_yaml_type(v)}"
        ),
    },
    "target": {
        "*": lambda v: (
            f"{_show(v)} is not a valid target: give a file path, relative to /run/secrets or "
            "absolute, not ending in '/'"
        ),
    },
    "numeric id": {
        "*": lambda v: f'{_show(v)} is not a numeric id: use digits, like "1000"',
    },
    "file mode": {"*": _mode},
    "labels": {
        "type": lambda v: f"labels must be a mapping of string keys to string values; got {_yaml_type(v)}",
    },
    "label key": {
        "not": lambda v: f"label {_show(v)} uses the reserved prefix 'io.swarm-secrets.': choose another key",
        "*": lambda v: "label keys must not be empty",
    },
    "label value": {
        "*": lambda v: f"label values must be strings; got {_yaml_type(v)} {_show(v)}: quote it",
    },
    "optional": {"*": lambda v: f"optional must be true or false, got {_show(v)}"},
    # the policy (schemas/policy.v1.json)
    "rules": {"type": lambda v: f"rules must be a list of rules, got {_yaml_type(v)}"},
    "rule": {"type": lambda v: f"a rule must be a mapping with at least `sets`, got {_yaml_type(v)}"},
    "set globs": {
        "minItems": lambda v: "sets must name at least one set glob (`*` for all)",
        "type": lambda v: f"sets must be a list of set-name globs, got {_yaml_type(v)}",
    },
    "set glob": {
        "*": lambda v: f"{_show(v)} is not a set-name glob: use lowercase letters, digits, '-', '*', '?'"
    },
    "service glob": {
        "*": lambda v: f"{_show(v)} is not a service-name glob: use letters, digits, '_', '.', '-', '*', '?'"
    },
    "stack name": {"*": lambda v: f"{_show(v)} is not a stack name: letters, digits, '_', '.', '-'"},
    # kind: Stack (schemas/stack.v1.json)
    "compose files": {
        "minItems": lambda v: "compose must list at least one compose file",
        "type": lambda v: f"compose must be a list of compose files, got {_yaml_type(v)}",
    },
    "compose file": {"*": lambda v: "a compose file is a path relative to this manifest's folder, not empty"},
    "variables": {"type": lambda v: f"env must map variable names to strings, got {_yaml_type(v)}"},
    "variable value": {
        "*": lambda v: f"variable values are strings; got {_yaml_type(v)} {_show(v)}: quote it"
    },
    "prune": {"*": lambda v: f"prune must be true or false, got {_show(v)}"},
    "resolve image": {"*": lambda v: f"resolveImage must be always, changed or never, got {_show(v)}"},
    "deploy globs": {"type": lambda v: f"deploy must be a list of stack-name globs, got {_yaml_type(v)}"},
    "stack glob": {
        "*": lambda v: f"{_show(v)} is not a stack-name glob: use letters, digits, '_', '.', '-', '*', '?'"
    },
    "target glob": {
        "*": lambda v: f"{_show(v)} is not a target glob: targets are absolute paths, like '/run/secrets/*'"
    },
    "variable glob": {
        "*": lambda v: f"{_show(v)} is not a variable-name glob: use letters, digits, '_', '*', '?'"
    },
    "file glob": {
        "*": lambda v: (
            f"{_show(v)} is not a file glob: give a path relative to the source root, like 'teams/shop/*'"
        )
    },
    "adopt": {"*": lambda v: f"adopt must be true or false, got {_show(v)}"},
    "sops settings": {"type": lambda v: f"sops must be a mapping like {{env: [AWS_*]}}, got {_yaml_type(v)}"},
    "sops variables": {"type": lambda v: f"env must be a list of variable-name globs, got {_yaml_type(v)}"},
}
