"""Read YAML and remember where every value came from.

``yaml.safe_load`` gives values without positions, and silently keeps the last of two equal keys in a
mapping. This module composes the node graph with :class:`yaml.SafeLoader` and walks it itself, so a
configuration error can name the file, the line and the field:

- :func:`load_text` / :func:`load_file` return a :class:`Document`: the plain Python value (``dict``,
  ``list``, ``str``, ``int``, ``float``, ``bool``, ``None``, dates; mapping keys keep their YAML type, so
  ``{1: lane1-in}`` has the int key ``1``), the 1-based line of every value by its path, and the
  non-fatal problems found (duplicate keys: the first occurrence is kept, each later one is reported).
- Text that cannot be read as one YAML document (a syntax error, an unknown tag, a merge key ``<<``, a
  list or mapping used as a key, a recursive alias) raises :class:`YamlError` with its line.

A path is a tuple of mapping keys and list indexes: ``("devices", 0, "antennas", 1)``. The line recorded for
a mapping entry is its key's line; for a list item, the line the item starts on; for the root, the line the
document's content starts on.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["Document", "FieldPath", "YamlError", "YamlProblem", "load_file", "load_text"]

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
class Document:
    """A YAML document's value and where each part of it came from."""

    value: Any
    """The plain Python value (``None`` for an empty document)."""
    lines: Mapping[FieldPath, int]
    """The 1-based line of every value, by path."""
    problems: tuple[YamlProblem, ...] = ()
    """Non-fatal problems (duplicate keys), in document order."""

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
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        raise YamlError(_mark_line(err), _describe(err)) from None
    except yaml.YAMLError as err:  # a reader error (a control character) has no MarkedYAMLError mark
        raise YamlError(_reader_line(err, text), "not readable as YAML text") from None
    if root is None:
        return Document(value=None, lines={})
    walker = _Walker()
    value = walker.value(root, (), root.start_mark.line + 1)
    return Document(value=value, lines=walker.lines, problems=tuple(walker.problems))


def load_file(path: str | Path) -> Document:
    """Read one YAML document from a UTF-8 file. Raises :class:`OSError` when the file cannot be read,
    :class:`YamlError` when its content is not UTF-8 or not YAML."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise YamlError(data.count(b"\n", 0, err.start) + 1, "not UTF-8 text") from None
    return load_text(text)


class _Walker:
    def __init__(self) -> None:
        self.lines: dict[FieldPath, int] = {}
        self.problems: list[YamlProblem] = []
        self._constructor = SafeConstructor()
        self._open: set[int] = set()  # ids of the collections being walked: an alias to one is a cycle

    def value(self, node: Node, path: FieldPath, line: int) -> Any:
        self.lines[path] = line
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
            raise YamlError(_mark_line(err, node), _describe(err)) from None
        except ValueError:  # e.g. a timestamp-shaped scalar with month 13
            raise YamlError(node.start_mark.line + 1, "invalid value for its YAML type") from None


def _mark_line(err: yaml.MarkedYAMLError, node: Node | None = None) -> int:
    mark = err.problem_mark or err.context_mark or (node.start_mark if node is not None else None)
    return mark.line + 1 if mark is not None else 1


def _describe(err: yaml.MarkedYAMLError) -> str:
    """PyYAML's problem and context, without its snippet of the source (which could show a secret)."""
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
