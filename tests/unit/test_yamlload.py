"""The libyaml fast path of ``yamlload`` reads manifests exactly as the pure-Python parser does."""

from __future__ import annotations

import pytest
import yaml

from reconciler.manifests import yamlload
from reconciler.manifests.yamlload import Document, YamlProblem, compose_documents

MANIFESTS = [
    # the shapes manifests use: block and flow mappings, lists, quoting, octal, anchors, merge keys
    """\
apiVersion: swarm-secrets/v1
kind: SecretSet
metadata: {name: shop}
spec:
  keep: 1
  secrets:
    db.password:
      source: {sops: {file: s.enc.yaml, key: [db, "host.name"]}}
      labels: &team {team: "data", on: 'yes'}
      services:
        - shop_db
        - {service: shop_web, target: /etc/x, uid: "1000", gid: 1000, mode: 0440}
    other:
      labels: {<<: *team, extra: "x"}
      source:
        file: >-
          folded
          path
""",
    "a: 1\n---\n---\nb: [1, 2]\n...\n",
    "\ufeffkey: value\r\nother: 2\r\n",
    "# only a comment\n",
    "",
]


def _pure(text: str) -> list[Document]:
    return [doc.build() for doc in yamlload._compose_pure(text)]


@pytest.mark.skipif(yamlload._CLoader is None, reason="PyYAML without libyaml")
@pytest.mark.parametrize("text", MANIFESTS)
def test_fast_path_builds_the_same_data_and_lines(text: str) -> None:
    assert yamlload._CLoader is not None
    fast = yamlload._compose_fast(yamlload._CLoader, text)
    assert fast is not None
    assert [doc.build() for doc in fast] == _pure(text)
    assert [doc.build() for doc in compose_documents(text)] == _pure(text)


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\t\n",  # a tab: libyaml accepts it, the pure parser does not
        "a: !\n",  # a bare tag: libyaml reads a string, the pure parser null
        "a: \x07\n",  # a control character: only the pure reader refuses it
        "a: [1,\n",  # refused by both: the error is the pure parser's
        "a: 1\nb: [1, *nope]\n",
    ],
)
def test_texts_where_the_parsers_differ_get_the_pure_parsers_answer(text: str) -> None:
    def answer(documents: object) -> object:
        try:
            return [doc.build() for doc in documents]  # type: ignore[attr-defined]
        except YamlProblem as exc:
            return (exc.message, exc.line)

    assert answer(compose_documents(text)) == answer(yamlload._compose_pure(text))


def test_errors_after_good_documents_still_yield_those_first() -> None:
    seen = []
    with pytest.raises(YamlProblem) as caught:
        for doc in compose_documents("a: 1\n---\nb: [1, *nope]\n"):
            seen.append(doc.build().data)
    assert seen == [{"a": 1}]
    assert (caught.value.message, caught.value.line) == ("YAML syntax error: found undefined alias 'nope'", 3)


def test_texts_for_the_pure_parser_only() -> None:
    assert yamlload._pure_only("x\x07")
    assert yamlload._pure_only("a:\tb")
    assert yamlload._pure_only("a: !!str b")
    assert not yamlload._pure_only("plain: text, 'quoted' \"é\" 0440 # c\n")
    assert yamlload._NON_PRINTABLE is yaml.reader.Reader.NON_PRINTABLE


def test_a_control_character_is_one_located_problem() -> None:
    with pytest.raises(YamlProblem) as caught:
        list(compose_documents("a: 1\nb: x\x07\n"))
    assert caught.value.line == 2
    assert caught.value.message.startswith("character #x0007 is not allowed in YAML")
