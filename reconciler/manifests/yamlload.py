"""Read YAML documents with the line of every node, refusing duplicate keys.

``manifest.py`` needs two things PyYAML's ``safe_load`` does not give: the line where each mapping key
or sequence item stands (so a problem can say ``file:line``), and an error on a repeated mapping key
(PyYAML silently keeps the last one, which hides an operator's mistake).

So documents are *composed* into nodes (every node carries its line) and then *built* here by a small
walk that records ``path → line`` and checks keys. Composing first also lets the caller skip documents
that are not ours (a sops-encrypted file, ``.sops.yaml``) without constructing them, so their custom
tags or odd keys never cause errors.

Composing uses libyaml (``yaml.CSafeLoader``: about eight times faster than the pure-Python parser on a
1,000-secret manifest) when PyYAML has it. Everything else stays with the pure parser
(:class:`yaml.SafeLoader`): a text libyaml refuses is composed again by it, so every error is found
and worded as before; and texts where the two are known to differ never reach libyaml: characters the
pure reader refuses, tabs (libyaml accepts them in more places) and tags (``!``: libyaml reads an
empty ``!`` scalar as a string, the pure parser as null). Differential fuzzing of the two found no
other difference in meaning; libyaml still accepts a few rare constructs the pure parser refuses (a
comment right after a block scalar indicator, ``?`` inside a flow collection).

Rules of the walk: scalars are constructed by the safe constructor (``0440`` is the octal integer 288,
``true`` a bool) and the text of every integer token is kept as written (``Document.int_tokens``:
``mode: 440`` and ``mode: 0440`` are told apart); mapping keys are always their text; merge keys
(``<<``) work; a recursive alias is refused, and so is a document that expands to more than
:data:`MAX_NODES` nodes (aliases can blow up a small file) or nests collections deeper than
:data:`MAX_DEPTH`. Nesting too deep for the composer itself (Python's recursion limit with the
pure-Python loader, libyaml's own limit with the C one) is the same clear problem, never a
``RecursionError``.

This module reads only the text it is given: no file system access, no logging of content.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

PathKey: TypeAlias = tuple[str | int, ...]
"""A position in a document: mapping keys (str) and sequence indexes (int) from the root."""

MAX_NODES = 100_000
"""A manifest has a few hundred nodes; more means an alias bomb or the wrong file."""
MAX_DEPTH = 64
"""A manifest nests about six levels deep; far more means a hostile or broken file."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class YamlProblem(Exception):
    """A document cannot be read: syntax error, duplicate key, bad tag. ``line`` is 1-based."""

    def __init__(self, message: str, line: int | None, path: PathKey = ()) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.path = path


@dataclass(frozen=True, slots=True, kw_only=True)
class Document:
    """One built YAML document and where each of its parts stands in the file."""

    data: object
    line: int
    """Line of the document's root node (1-based)."""
    lines: Mapping[PathKey, int]
    """Line of every mapping key and sequence item, by path; ``()`` is the root."""
    int_tokens: Mapping[PathKey, str] = field(default_factory=dict)
    """The text as written of every scalar YAML read as an integer, by path: ``440`` and ``0440``
    are different mistakes (decimal vs octal) that the built value cannot tell apart."""

    def line_of(self, path: PathKey) -> int:
        """The line of ``path``, or of its nearest ancestor that exists (e.g. for a missing key)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return self.line


def format_path(path: PathKey) -> str:
    """``('spec', 'secrets', 'pw', 'services', 1, 'mode')`` → ``spec.secrets.pw.services[1].mode``.

    Keys that are not plain words (``com.example.team``, ``db.password``) are quoted in brackets so
    the path stays unambiguous.
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


_CLoader: type[yaml.SafeLoader] | None = getattr(yaml, "CSafeLoader", None)
"""libyaml's parser and composer with PyYAML's safe constructor and resolver (None without libyaml)."""

_NON_PRINTABLE = yaml.reader.Reader.NON_PRINTABLE  # PyYAML's own compiled pattern (no compile here)


def _pure_only(text: str) -> bool:
    """Texts with a tab, a tag, or a character the pure reader refuses take the pure path (module
    docstring)."""
    return "\t" in text or "!" in text or _NON_PRINTABLE.search(text) is not None


class ComposedDocument:
    """A composed (not yet built) document: cheap to peek into, built only when it is ours."""

    def __init__(self, loader: yaml.SafeLoader, node: Node) -> None:
        self._loader = loader
        self.node = node

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    def top_level_text(self, key: str) -> str | None:
        """The text of a top-level scalar ``key`` if the root is a mapping that has one, else None."""
        if not isinstance(self.node, MappingNode):
            return None
        for key_node, value_node in self.node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == key:
                return str(value_node.value) if isinstance(value_node, ScalarNode) else None
        return None

    def text_at(self, *keys: str) -> str | None:
        """The text of the scalar at ``keys`` (mapping keys from the root, e.g. ``metadata``, ``name``)
        when every step is a mapping that has the key once, else None."""
        node = self.node
        for key in keys:
            if not isinstance(node, MappingNode):
                return None
            values = [v for k, v in node.value if isinstance(k, ScalarNode) and k.value == key]
            if len(values) != 1:
                return None  # missing, or a duplicate key (a problem of its own): nobody to name
            node = values[0]
        return str(node.value) if isinstance(node, ScalarNode) else None

    def build(self) -> Document:
        """Construct the Python data and the line map; raises :class:`YamlProblem`."""
        builder = _Builder(self._loader)
        data = builder.build(self.node, (), set())
        return Document(data=data, line=self.line, lines=builder.lines, int_tokens=builder.int_tokens)


def compose_documents(text: str) -> Iterator[ComposedDocument]:
    """Compose each document of ``text`` in order; a YAML syntax error raises :class:`YamlProblem`.

    Documents before the error are yielded first, so the caller can still use them.
    """
    if _CLoader is not None and not _pure_only(text):
        composed = _compose_fast(_CLoader, text)
        if composed is not None:
            yield from composed
            return
    yield from _compose_pure(text)


def _compose_fast(loader_class: type[yaml.SafeLoader], text: str) -> list[ComposedDocument] | None:
    """Every document composed by libyaml, or None when it finds a problem (the pure parser then reads
    the text again and words the error exactly as it always has)."""
    loader = loader_class(text)
    documents: list[ComposedDocument] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                documents.append(ComposedDocument(loader, node))
    except Exception:  # noqa: BLE001 - any refusal (or libyaml binding quirk) goes to the pure parser
        return None
    finally:
        loader.dispose()
    return documents


def _compose_pure(text: str) -> Iterator[ComposedDocument]:
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:  # the reader checks a str input at once: a control character
        line = text.count("\n", 0, exc.position) + 1
        raise YamlProblem(
            f"character #x{exc.character:04x} is not allowed in YAML ({exc.reason}): remove it", line
        ) from None
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                yield ComposedDocument(loader, node)
    except yaml.MarkedYAMLError as exc:
        raise YamlProblem(_describe(exc), _mark_line(exc)) from None
    except yaml.YAMLError as exc:  # ReaderError (bad bytes) and friends carry no mark
        raise YamlProblem(f"not readable as YAML: {exc}", None) from None
    except RecursionError:
        # The pure-Python composer recurses once per nesting level; the stack has unwound by now.
        raise YamlProblem(_too_deep(), _line_of(loader)) from None
    finally:
        loader.dispose()


def _too_deep() -> str:
    return f"YAML nested more than {MAX_DEPTH} levels deep: a manifest needs about six; fix or split the file"


def _line_of(loader: yaml.SafeLoader) -> int | None:
    try:
        return int(loader.get_mark().line) + 1
    except Exception:  # noqa: BLE001 - a line number is a nicety
        return None


def _mark_line(exc: yaml.MarkedYAMLError) -> int | None:
    mark = exc.problem_mark or exc.context_mark
    return int(mark.line) + 1 if mark is not None else None


def _describe(exc: yaml.MarkedYAMLError) -> str:
    # PyYAML's str() spans several lines with a caret drawing; keep the words only. The problem line
    # is where the parser gave up; where the construct began (an unclosed bracket) is often the fix.
    context = exc.context or ""
    if (
        context
        and exc.context_mark is not None
        and exc.problem_mark is not None
        and exc.context_mark.line != exc.problem_mark.line
    ):
        context += f" (started on line {exc.context_mark.line + 1})"
    parts = [p for p in (context, exc.problem) if p]
    return "YAML syntax error: " + ", ".join(parts) if parts else "YAML syntax error"


class _Builder:
    """Walks composed nodes into plain data, recording lines and refusing duplicate keys."""

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self._loader = loader
        self.lines: dict[PathKey, int] = {}
        self.int_tokens: dict[PathKey, str] = {}
        self._count = 0

    def build(self, node: Node, path: PathKey, active: set[int]) -> object:
        self._count += 1
        if len(active) >= MAX_DEPTH:  # `active` holds the collections between the root and here
            raise YamlProblem(_too_deep(), int(node.start_mark.line) + 1, path[:8])
        if self._count > MAX_NODES:
            raise YamlProblem(
                f"document expands to more than {MAX_NODES} nodes (alias bomb?); split it or drop aliases",
                int(node.start_mark.line) + 1,
                path,
            )
        if path not in self.lines:
            self.lines[path] = int(node.start_mark.line) + 1
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if id(node) in active:
            raise YamlProblem("recursive alias: a node contains itself", int(node.start_mark.line) + 1, path)
        active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.build(item, (*path, i), active) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                return self._mapping(node, path, active)
        finally:
            active.discard(id(node))
        raise YamlProblem(f"unsupported YAML node {type(node).__name__}", int(node.start_mark.line) + 1, path)

    def _scalar(self, node: ScalarNode, path: PathKey) -> object:
        if node.tag == _STR_TAG:
            return node.value  # what the safe constructor returns for a string, minus its dispatch
        try:
            value = self._loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise YamlProblem(
                _describe(exc).replace("YAML syntax error", "bad YAML value"), _mark_line(exc), path
            ) from None
        if type(value) is int:  # a plain token YAML read as a number: keep how it was written
            self.int_tokens[path] = str(node.value)
        return value

    def _mapping(self, node: MappingNode, path: PathKey, active: set[int]) -> dict[str, object]:
        # Merged mappings (`<<: *anchor`) first, so the lines of keys written here win over theirs.
        merged: dict[str, object] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.update(self._merge_source(value_node, path, active))
        result: dict[str, object] = {}
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line = int(key_node.start_mark.line) + 1
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, ScalarNode):
                raise YamlProblem("mapping keys must be plain text, not a list or mapping", key_line, path)
            # Keys are compared and kept as written: `on:` stays "on", never True.
            key = str(key_node.value)
            if key in seen:
                raise YamlProblem(
                    f"duplicate key '{key}' (first on line {seen[key]}): YAML would silently keep only "
                    "the last one; remove or rename one of them",
                    key_line,
                    (*path, key),
                )
            seen[key] = key_line
            self.lines[(*path, key)] = key_line
            result[key] = self.build(value_node, (*path, key), active)
        # Keys written in the mapping itself win over merged ones, as YAML's merge key specifies.
        return {**merged, **result} if merged else result

    def _merge_source(self, node: Node, path: PathKey, active: set[int]) -> dict[str, object]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        merged: dict[str, object] = {}
        for source in reversed(sources):  # earlier mappings in the list win
            if not isinstance(source, MappingNode):
                raise YamlProblem(
                    "a merge key (<<) needs a mapping or a list of mappings",
                    int(source.start_mark.line) + 1,
                    path,
                )
            built = self.build(source, path, active)
            assert isinstance(built, dict)
            merged.update(built)
        return merged
