"""One YAML text read at `yaml.safe_load` level, with problems placed at line:column in it.

`Document.read` composes the node tree (libyaml when available) and constructs the data from it
with PyYAML's SafeConstructor, after refusing what must not be built: tags other than plain data
(``!!python/object``: never constructed), duplicate keys, aliases that contain themselves or
expand to a huge document. `Document.node_at` walks a field path (``("automations", 0,
"trigger")``) down the node tree, so a problem found in the data is reported where it was written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["UNCONSTRUCTED", "Document", "FieldPath", "Problem", "format_path"]

#: libyaml's parser when available (several times faster); both construct with SafeConstructor.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_TAG = "tag:yaml.org,2002:"
_ALLOWED_TAGS = frozenset(tag for tag in yaml.SafeLoader.yaml_constructors if tag is not None)
_MERGE_TAG = f"{_YAML_TAG}merge"

#: A place in the data: mapping keys and list indexes.
FieldPath = tuple[str | int, ...]

#: The data of a document that was refused before construction.
UNCONSTRUCTED: Any = object()


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based; 0 when the problem has no place in the text
    column: int
    #: ``source:line:column: field.path: message``
    text: str


class Document:
    """One YAML text: its node tree, and problems placed in it."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        self.root: Node | None = None
        self.text = ""

    def read(self, text: str) -> tuple[Node | None, Any]:
        """(node tree, data); data is `UNCONSTRUCTED` when nodes that must not be built exist."""
        self.text = text
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                return None, None
            self.root = root
            if self._check_nodes(root, (), set()) or not self._check_size(root):
                return root, UNCONSTRUCTED
            return root, loader.construct_document(root)
        except yaml.MarkedYAMLError as exc:
            self._yaml_error(exc)
            return None, None
        except yaml.reader.ReaderError as exc:  # a character YAML refuses anywhere (NUL, controls)
            self._reader_error(exc)
            return None, None
        except yaml.YAMLError as exc:
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.problems.append(Problem(1, 1, f"{self.source}:1:1: invalid YAML: {problem}"))
            return None, None
        finally:
            loader.dispose()

    def _yaml_error(self, exc: yaml.MarkedYAMLError) -> None:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or str(exc).splitlines()[0]
        if problem.startswith("but found another document"):
            problem = "a file holds one YAML document; remove the `---` separator (or split the file)"
        elif "cannot start any token" in problem and mark is not None and _char_at(self.text, mark) == "\t":
            problem = "a tab character; indent with spaces"
        elif exc.context and exc.context_mark is not None and (
            mark is None or exc.context_mark.line != mark.line
        ):
            problem += f" ({exc.context} on line {exc.context_mark.line + 1})"
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        where = f"{self.source}:{line}:{column}" if mark is not None else self.source
        self.problems.append(Problem(line, column, f"{where}: invalid YAML: {problem}"))

    def _reader_error(self, exc: yaml.reader.ReaderError) -> None:
        """Placed at the first occurrence of the refused character: the reader stops there (its
        own `position` counts bytes in libyaml, characters in PyYAML)."""
        character = chr(exc.character) if isinstance(exc.character, int) else str(exc.character)
        at = self.text.find(character) if character else -1
        before = self.text[:at] if at >= 0 else ""
        line, column = before.count("\n") + 1, at - (before.rfind("\n") + 1) + 1 if at >= 0 else 1
        code = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(character)
        self.problems.append(Problem(line, column, (
            f"{self.source}:{line}:{column}: invalid YAML: unacceptable character {code}: {exc.reason}; "
            "remove it or save the file as plain UTF-8 text"
        )))

    def _check_size(self, root: Node) -> bool:
        """Refuse aliases that contain themselves or expand to a huge document ("billion
        laughs"): the file is data for a service that must keep running."""
        try:
            size = _expanded_size(root, {}, set())
        except _SelfAlias as exc:
            self.add_at(exc.node, (), "an alias that contains itself is not allowed")
            return False
        except RecursionError:
            self.add_at(root, (), "the document is nested too deeply")
            return False
        if size > _MAX_NODES:
            self.add_at(root, (), f"the document expands (through aliases) to more than {_MAX_NODES:,} values")
            return False
        return True

    def _check_nodes(self, node: Node, path: FieldPath, seen: set[int]) -> bool:
        """Report tags that are not plain data and duplicate keys; True if a tag was refused."""
        if id(node) in seen:  # an alias: checked where its anchor is
            return False
        seen.add(id(node))
        refused = False
        if node.tag not in _ALLOWED_TAGS:
            tag = node.tag.replace(_YAML_TAG, "!!")
            self.add_at(node, path, f"tag {tag!r} is not allowed: automation files hold plain data (mappings, lists, text, numbers), never Python objects")
            return True
        if isinstance(node, MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if key.tag == _MERGE_TAG:
                    refused |= self._check_nodes(value, path, seen)
                    continue
                refused |= self._check_nodes(key, path, seen)
                child = path + (key.value if isinstance(key, ScalarNode) else "?",)
                if isinstance(key, ScalarNode):
                    ident = (key.tag, key.value)
                    if ident in first:
                        self.add_at(key, child, f"duplicate key {key.value!r} (first on line {first[ident]}); a key may appear once in a mapping")
                    else:
                        first[ident] = key.start_mark.line + 1
                refused |= self._check_nodes(value, child, seen)
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                refused |= self._check_nodes(item, path + (i,), seen)
        return refused

    # --- placing problems ---

    def add(self, path: FieldPath, message: str, *, at_key: bool = False) -> None:
        self.problems.append(self.problem(path, message, at_key=at_key))

    def problem(self, path: FieldPath, message: str, *, at_key: bool = False) -> Problem:
        node = self.node_at(path, at_key=at_key)
        return self._problem(node, path, message)

    def add_at(self, node: Node, path: FieldPath, message: str) -> None:
        self.problems.append(self._problem(node, path, message))

    def _problem(self, node: Node, path: FieldPath, message: str) -> Problem:
        field = format_path(path)
        return self.placed(node, f"{field + ': ' if field else ''}{message}")

    def placed(self, node: Node, text: str) -> Problem:
        """`text` (``field.path: message``) placed at `node`."""
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        return Problem(line, column, f"{self.source}:{line}:{column}: {text}")

    def node_at(self, path: FieldPath, *, at_key: bool = False) -> Node:
        """The node at `path` (its key node with `at_key`), else the deepest one on the way."""
        assert self.root is not None
        node = self.root
        for i, part in enumerate(path):
            found = _child(node, part)
            if found is None:
                break
            key, value = found
            if at_key and i == len(path) - 1 and key is not None:
                return key
            node = value
        return node



_MAX_NODES = 1_000_000


def _char_at(text: str, mark: yaml.Mark) -> str:
    lines = text.splitlines()
    if mark.line < len(lines) and mark.column < len(lines[mark.line]):
        return lines[mark.line][mark.column]
    return ""


class _SelfAlias(Exception):
    def __init__(self, node: Node) -> None:
        self.node = node


def _expanded_size(node: Node, sizes: dict[int, int], open_: set[int]) -> int:
    """How many values `node` holds once its aliases are expanded (each shared node counted
    as often as it is referred to), computed once per node."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise _SelfAlias(node)
    open_.add(key)
    size = 1
    if isinstance(node, MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, sizes, open_) + _expanded_size(v, sizes, open_)
    elif isinstance(node, SequenceNode):
        for item in node.value:
            size += _expanded_size(item, sizes, open_)
    open_.discard(key)
    sizes[key] = size
    return size


def _child(node: Node, part: str | int) -> tuple[Node | None, Node] | None:
    if isinstance(node, SequenceNode):
        if isinstance(part, int) and 0 <= part < len(node.value):
            return None, node.value[part]
        return None
    if isinstance(node, MappingNode):
        # The last one wins, as in the constructed data; merged mappings were folded into
        # `node.value` by the constructor.
        for key, value in reversed(node.value):
            if isinstance(key, ScalarNode) and key.value == str(part):
                return key, value
    return None


def format_path(path: FieldPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out
