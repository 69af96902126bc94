"""The compiled validator (jsonschema-rs) only ever sends a document to jsonschema, never past it.

``schema_problems`` returns "no problems" on jsonschema-rs's word alone. That is safe only if
jsonschema-rs accepts nothing jsonschema refuses, so every YAML document the repository holds (the
bad-manifest corpus with its ~60 mistakes, the examples, the deployment's policy, the test fixtures)
is checked by both, each against the schema of its kind. The good ones must pass the fast check too,
or the fast path would be dead code that slows nothing down but also speeds nothing up.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from reconciler.manifests import schema
from reconciler.manifests.yamlload import YamlProblem, compose_documents

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("manifests", "deploy", "examples", "tests")
SCHEMA_OF_KIND = {
    "secretset": schema.SCHEMA_FILE,
    "policy": schema.POLICY_SCHEMA_FILE,
    "stack": schema.STACK_SCHEMA_FILE,
}


def _documents() -> list[tuple[str, int, object, str]]:
    found = []
    for folder in FOLDERS:
        for file in sorted((ROOT / folder).rglob("*.y*ml")):
            try:
                composed = list(compose_documents(file.read_text(encoding="utf-8")))
                built = [
                    (c.top_level_text("apiVersion"), c.top_level_text("kind"), c.build()) for c in composed
                ]
            except (YamlProblem, UnicodeDecodeError):
                continue  # a corpus case about YAML itself: no document reaches the schema
            for index, (api, kind, doc) in enumerate(built):
                if api is not None and api.startswith("swarm-secrets/") and kind is not None:
                    file_schema = SCHEMA_OF_KIND.get(kind.lower(), schema.SCHEMA_FILE)
                    found.append((str(file.relative_to(ROOT)), index, doc.data, file_schema))
    return found


def _stacks() -> list[tuple[str, int, object, str]]:
    # No Stack manifest is kept as a file (the integration tests write theirs): a few, good and bad.
    good = {
        "apiVersion": "swarm-secrets/v1",
        "kind": "Stack",
        "metadata": {"name": "shop"},
        "spec": {"compose": ["compose.yml"], "env": {"RELEASE": "1"}, "resolveImage": "never"},
    }
    specs: list[object] = [
        good["spec"],
        {"compose": ["a.yml", "b.yml"], "env": None, "prune": True},
        {"compose": []},
        {"compose": ["a.yml"], "env": {"1BAD": "x"}},
        {"compose": ["a.yml"], "resolveImage": "sometimes"},
        {"compose": ["a.yml"], "prune": "yes"},
        {"compose": ["a.yml"], "extra": 1},
        {},
    ]
    return [
        ("<stack>", index, {**good, "spec": spec}, schema.STACK_SCHEMA_FILE)
        for index, spec in enumerate(specs)
    ]


DOCUMENTS = _documents() + _stacks()


def _reference(data: object, file: str) -> list[str]:
    return [error.message for error in schema._validator(file).iter_errors(data)]


def test_the_repository_holds_documents_of_every_kind_both_valid_and_not() -> None:
    kinds = {file for _, _, _, file in DOCUMENTS}
    assert kinds == set(SCHEMA_OF_KIND.values())
    verdicts = {not _reference(data, file) for _, _, data, file in DOCUMENTS}
    assert verdicts == {True, False}
    assert len(DOCUMENTS) > 60


@pytest.mark.parametrize(("file", "index", "data", "schema_file"), DOCUMENTS, ids=lambda v: str(v)[:60])
def test_the_fast_check_accepts_exactly_what_jsonschema_accepts(
    file: str, index: int, data: object, schema_file: str
) -> None:
    refused = _reference(data, schema_file)
    assert schema.fast_valid(data, schema_file) == (not refused), (file, index, refused)


def test_a_value_the_fast_check_cannot_take_goes_to_jsonschema() -> None:
    # YAML gives dates and non-string keys; jsonschema-rs cannot take them, jsonschema decides.
    odd = {
        "apiVersion": "swarm-secrets/v1",
        "kind": "SecretSet",
        "metadata": {"name": datetime.date(2026, 1, 1)},
        "spec": {"secrets": {1: {"source": {"env": "X"}}}},
    }
    assert not schema.fast_valid(odd)
    assert schema.schema_problems(odd)


def test_a_trailing_newline_is_judged_by_jsonschema_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    # Python's `$` matches before a final newline, the compiled validator's does not: the fast check
    # refuses, and the verdict is jsonschema's, exactly what it is without the fast path.
    data = {
        "apiVersion": "swarm-secrets/v1",
        "kind": "SecretSet",
        "metadata": {"name": "shop\n"},
        "spec": {"secrets": {}},
    }
    assert not schema.fast_valid(data)
    with_fast_path = schema.schema_problems(data)
    monkeypatch.setattr(schema, "fast_valid", lambda data, file=schema.SCHEMA_FILE: False)
    assert with_fast_path == schema.schema_problems(data)
