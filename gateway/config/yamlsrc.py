"""Read YAML and remember where every value came from.

``yaml.safe_load`` gives values without positions, and silently keeps the last of two equal keys in a
mapping. This module composes the node graph with :class:`yaml.SafeLoader` and walks it itself, so a
configuration error can name the file, the line and the field:

- :func:`load_text` / :func:`load_file` return a :class:`Document`: the plain Python value (``dict``,
  ``list``, ``str``, ``int``, ``float``, ``bool``, ``None``, dates; mapping keys keep their YAML type, so
  ``{1: lane1-in}`` has the int key ``1``), the 1-based line of every value by its path, and the
  non-fatal problems found (duplicate keys: the first occurrence is kept, each later one is reported).
- Text that cannot be read as one YAML document (a syntax error, an unknown tag, a merge key ``<<``, a
  list or mapping used as a key, a recursive alias) raises :class:`YamlError` with its line. Indentation
  mistakes, which PyYAML reports in terms of its parser ("expected <block end>, but found '?'"), are said
  to be indentation, with the line where the enclosing block starts.
- An alias (``*name``) is walked like a copy of its anchored value (``&name``), at its own path; the
  document remembers which paths are such copies (:meth:`Document.anchored`), so that a problem inside an
  anchored value that several places reuse can be reported once, where it is written.

A path is a tuple of mapping keys and list indexes: ``("devices", 0, "antennas", 1)``. The line recorded for
a mapping entry is its key's line; for a list item, the line the item starts on; for the root, the line the
document's content starts on.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import CollectionStartEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["Alias", "Document", "FieldPath", "YamlError", "YamlProblem", "load_file", "load_text"]

FieldPath = tuple[Hashable, ...]
"""Mapping keys and list indexes from the document's root to a value."""

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlError(Exception):
    """The text is not one readable YAML document. ``line`` is 1-based; ``message`` never quotes a
    scalar value of the document (it may quote a tag or a mapping key)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class YamlProblem:
    """A problem that does not stop reading (the document's value is still usable)."""

    line: int
    path: FieldPath
    message: str


@dataclass(frozen=True, slots=True)
class Alias:
    """Where an alias points: the anchor's name and the path of the value it names."""

    anchor: str
    target: FieldPath


@dataclass(frozen=True, slots=True)
class Document:
    """A YAML document's value and where each part of it came from."""

    value: Any
    """The plain Python value (``None`` for an empty document)."""
    lines: Mapping[FieldPath, int]
    """The 1-based line of every value, by path."""
    problems: tuple[YamlProblem, ...] = ()
    """Non-fatal problems (duplicate keys), in document order."""
    aliases: Mapping[FieldPath, Alias] = field(default_factory=dict)
    """The paths whose value is an alias (``*name``), and the anchored value each one repeats. The lines
    of what is inside such a value are the anchored text's lines."""

    def anchored(self, path: Sequence[Hashable]) -> tuple[FieldPath, str] | None:
        """Where the value at ``path`` is written, when ``path`` leads through an alias: the path of the
        same value inside the anchored text, and the (outermost) anchor's name; None when ``path`` leads
        through no alias."""
        current = tuple(path)
        anchor: str | None = None
        while True:
            for end in range(1, len(current) + 1):
                alias = self.aliases.get(current[:end])
                if alias is not None:
                    if anchor is None:
                        anchor = alias.anchor
                    current = alias.target + current[end:]
                    break
            else:
                return None if anchor is None else (current, anchor)

    def line_of(self, path: Sequence[Hashable]) -> int:
        """The line of the value at ``path``, or of the nearest enclosing value that exists (1 when the
        document is empty)."""
        key = tuple(path)
        while key:
            line = self.lines.get(key)
            if line is not None:
                return line
            key = key[:-1]
        return self.lines.get((), 1)


def load_text(text: str) -> Document:
    """Read one YAML document from ``text``. Raises :class:`YamlError`."""
    loader = _AnchorLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as err:
        raise YamlError(_mark_line(err), _describe(err, text)) from None
    except yaml.YAMLError as err:  # a reader error (a control character) has no MarkedYAMLError mark
        raise YamlError(_reader_line(err, text), "not readable as YAML text") from None
    finally:
        loader.dispose()
    if root is None:
        return Document(value=None, lines={})
    walker = _Walker(loader.anchors_of)
    value = walker.value(root, (), root.start_mark.line + 1)
    return Document(value=value, lines=walker.lines, problems=tuple(walker.problems), aliases=walker.aliases)


def load_file(path: str | Path) -> Document:
    """Read one YAML document from a UTF-8 file. Raises :class:`OSError` when the file cannot be read,
    :class:`YamlError` when its content is not UTF-8 or not YAML."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise YamlError(data.count(b"\n", 0, err.start) + 1, "not UTF-8 text") from None
    return load_text(text)


class _AnchorLoader(yaml.SafeLoader):
    """PyYAML's safe loader, remembering the anchor's name of every anchored node (an alias is composed
    as the very node its anchor names, which keeps no name)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.anchors_of: dict[int, str] = {}  # id(node) -> anchor

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        node = super().compose_node(parent, index)
        if isinstance(event, ScalarEvent | CollectionStartEvent) and event.anchor and node is not None:
            self.anchors_of[id(node)] = event.anchor
        return node


class _Walker:
    def __init__(self, anchors_of: Mapping[int, str]) -> None:
        self.lines: dict[FieldPath, int] = {}
        self.problems: list[YamlProblem] = []
        self.aliases: dict[FieldPath, Alias] = {}
        self._anchors_of = anchors_of
        self._anchored_at: dict[int, FieldPath] = {}  # id(anchored node) -> the path it was first walked at
        self._constructor = SafeConstructor()
        self._open: set[int] = set()  # ids of the collections being walked: an alias to one is a cycle

    def value(self, node: Node, path: FieldPath, line: int) -> Any:
        self.lines[path] = line
        anchor = self._anchors_of.get(id(node))
        if anchor is not None:
            first = self._anchored_at.setdefault(id(node), path)
            if first != path:
                self.aliases[path] = Alias(anchor, first)
        if isinstance(node, ScalarNode):
            return self._scalar(node)
        if id(node) in self._open:
            raise YamlError(line, "recursive alias")
        self._open.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                return self._sequence(node, path)
        finally:
            self._open.discard(id(node))
        raise YamlError(line, f"unsupported YAML node {type(node).__name__}")  # pragma: no cover

    def _mapping(self, node: MappingNode, path: FieldPath) -> dict[Hashable, Any]:
        if node.tag != _MAP_TAG:
            raise YamlError(node.start_mark.line + 1, f"unsupported tag {node.tag!r} on a mapping")
        result: dict[Hashable, Any] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, ScalarNode):
                raise YamlError(key_line, "a mapping key must be a plain value, not a list or a mapping")
            if key_node.tag == _MERGE_TAG:
                raise YamlError(key_line, "merge keys (<<) are not supported")
            key = self._scalar(key_node)
            if not isinstance(key, Hashable):  # pragma: no cover - every safe scalar is hashable
                raise YamlError(key_line, "a mapping key must be hashable")
            if key in result:
                first = self.lines[(*path, key)]
                self.problems.append(
                    YamlProblem(key_line, (*path, key), f"duplicate key {key!r} (first at line {first})")
                )
                continue
            result[key] = self.value(value_node, (*path, key), key_line)
        return result

    def _sequence(self, node: SequenceNode, path: FieldPath) -> list[Any]:
        if node.tag != _SEQ_TAG:
            raise YamlError(node.start_mark.line + 1, f"unsupported tag {node.tag!r} on a list")
        return [
            self.value(item, (*path, index), item.start_mark.line + 1)
            for index, item in enumerate(node.value)
        ]

    def _scalar(self, node: ScalarNode) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as err:
            raise YamlError(_mark_line(err, node), _describe(err, "")) from None
        except ValueError:  # e.g. a timestamp-shaped scalar with month 13
            raise YamlError(node.start_mark.line + 1, "invalid value for its YAML type") from None


def _mark_line(err: yaml.MarkedYAMLError, node: Node | None = None) -> int:
    mark = err.problem_mark or err.context_mark or (node.start_mark if node is not None else None)
    return mark.line + 1 if mark is not None else 1


def _describe(err: yaml.MarkedYAMLError, text: str) -> str:
    """PyYAML's problem and context, without its snippet of the source (which could show a secret); an
    indentation mistake said as such."""
    indentation = _indentation(err, text)
    if indentation is not None:
        return indentation
    problem = err.problem or "invalid YAML"
    if err.context:
        where = ""
        if err.context_mark is not None and (
            err.problem_mark is None or err.context_mark.line != err.problem_mark.line
        ):
            where = f" at line {err.context_mark.line + 1}"
        return f"{problem} ({err.context}{where})"
    return problem


def _reader_line(err: yaml.YAMLError, text: str) -> int:
    position = getattr(err, "position", None)
    if isinstance(position, int):
        return text.count("\n", 0, position) + 1
    return 1


_BLOCKS = {"while parsing a block mapping": "mapping", "while parsing a block collection": "list"}
_FOUND_KEY = "expected <block end>, but found '?'"
_FOUND_MAPPING = "expected <block end>, but found '<block mapping start>'"
_FOUND_LIST = "expected <block end>, but found '<block sequence start>'"


def _indentation(err: yaml.MarkedYAMLError, text: str) -> str | None:
    """What PyYAML's parser error means when it comes from indentation, else None. Built from positions
    and the shape of the lines only (never their text: a line may hold a secret)."""
    problem, mark, context = err.problem or "", err.problem_mark, err.context_mark
    if mark is None:
        return None
    if problem.startswith("found character '\\t'"):
        return "a tab character: YAML indents with spaces only"
    block = _BLOCKS.get(err.context or "")
    if problem.startswith("expected <block end>") and block is not None and context is not None:
        starts = (
            f"the {block} it is in starts at line {context.line + 1}, indented by {_spaces(context.column)}"
        )
        if problem == _FOUND_KEY:
            return (
                f"bad indentation: a key in line with the '- ' of the list that starts at line "
                f"{context.line + 1}, where only a new item can start: indent it like the keys of its item"
            )
        if problem == _FOUND_MAPPING:
            spaces = _spaces(mark.column)
            return f"bad indentation: indented by {spaces}, which lines up with no key above it ({starts})"
        if problem == _FOUND_LIST:
            return (
                f"bad indentation: a '- ' item indented by {_spaces(mark.column)}, which lines up with no "
                f"list above it ({starts})"
            )
        return f"bad indentation ({starts}): {problem}"
    if problem == "mapping values are not allowed here":
        return _colon_not_allowed(text, mark.line, mark.column)
    return None


def _colon_not_allowed(text: str, line: int, column: int) -> str:
    """PyYAML's "mapping values are not allowed here": a key indented deeper than its block allows, or a
    ': ' inside an unquoted value."""
    lines = text.splitlines()
    if line >= len(lines):
        return "a ':' where none is allowed"
    current = lines[line]
    indent = len(current) - len(current.lstrip(" "))
    if ": " in current[indent:column] or current[indent:column].rstrip().endswith(":"):
        return "a ': ' inside an unquoted value: put the value in quotes"
    for before in range(line - 1, -1, -1):
        stripped = lines[before].strip()
        if stripped and not stripped.startswith("#"):
            above = len(lines[before]) - len(lines[before].lstrip(" "))
            if indent > above:
                return (
                    f"bad indentation: indented by {_spaces(indent)}, deeper than line {before + 1} "
                    f"(indented by {_spaces(above)}), which opens no block: line it up with the keys it "
                    "belongs with"
                )
            break
    return "a ':' where none is allowed: check this line's indentation, or quote a value that holds ': '"


def _spaces(count: int) -> str:
    return "1 space" if count == 1 else f"{count} spaces"
