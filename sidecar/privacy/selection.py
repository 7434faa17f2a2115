"""The part of a JSON body a profile keeps: ``keep`` paths, minus ``drop`` paths.

Paths are RFC 9535 JSONPath, compiled once per profile (python-jsonpath). The paths
profiles are made of (names, ``[*]``, indexes: ``$.messages[*].content``) are walked by
``Simple`` instead, the same matches at a fraction of the library's cost per document
(its general machinery was a tenth of a sampled event's masking); anything else goes
to the library. The result keeps
the document's shape around what was selected: ``$.messages[*].content`` on a chat
request gives ``{"messages": [{"content": ...}, ...]}``. Arrays are compacted to the
selected elements, in order, so elements selected by two paths (``role`` and ``content``
of the same message) stay together. Nothing is copied that was not selected, and a
document nested deeper than ``MAX_DEPTH`` is refused rather than walked (no recursion
error, no quadratic blow-up on hostile input).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any, Final, Protocol

from sidecar.privacy.rules import JSONPATH, BodyRule

MAX_DEPTH: Final = 64


class _All:
    """Marker: the whole subtree here is selected."""


ALL: Final = _All()
MISSING: Final = object()
Tree = dict[Any, Any]  # path part (str key or int index) -> Tree | ALL


class TooDeep(ValueError):
    """The document nests deeper than MAX_DEPTH: not captured."""


def _insert(tree: Tree, parts: tuple[Any, ...]) -> Tree | _All:
    if not parts:
        return ALL
    node: Tree = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is ALL:
            return tree
        if child is None:
            child = node[part] = {}
        node = child
    node[parts[-1]] = ALL
    return tree


class Path(Protocol):
    source: str

    def parts(self, document: Any) -> Iterator[tuple[Any, ...]]: ...


WILD: Final = object()  # ``[*]`` / ``.*`` in a ``Simple`` path
_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\.\*|\[\*\]|\[(0|-?[1-9][0-9]{0,8})\]"
                      r"|\['([A-Za-z0-9_ -]*)'\]|\[\"([A-Za-z0-9_ -]*)\"\]")


class Simple:
    """A path of names, wildcards and indexes, walked directly (RFC 9535: a name selects
    an object's member, ``*`` every member or element, an index an array's element,
    negative from the end; nothing else selects anything)."""

    def __init__(self, source: str, steps: list[Any]) -> None:
        self.source = source
        self.steps = steps

    @classmethod
    def parse(cls, source: str) -> Simple | None:
        """The path as steps (str name, int index, ``WILD``); None if it has other parts."""
        if not source.startswith("$"):
            return None
        steps: list[Any] = []
        position = 1
        while position < len(source):
            match = _SEGMENT.match(source, position)
            if match is None:
                return None
            name, index, quoted, double = match.groups()
            if index is not None:  # RFC 9535's int: no leading zero, no "-0"
                steps.append(int(index))
            else:
                text = name if name is not None else quoted if quoted is not None else double
                steps.append(WILD if text is None else text)
            position = match.end()
        return cls(source, steps)

    def parts(self, document: Any) -> Iterator[tuple[Any, ...]]:
        found: list[tuple[tuple[Any, ...], Any]] = [((), document)]
        for step in self.steps:
            after: list[tuple[tuple[Any, ...], Any]] = []
            for parts, value in found:
                if step is WILD:
                    if isinstance(value, dict):
                        after.extend(((*parts, k), v) for k, v in value.items())
                    elif isinstance(value, list):
                        after.extend(((*parts, i), v) for i, v in enumerate(value))
                elif isinstance(step, str):
                    if isinstance(value, dict) and step in value:
                        after.append(((*parts, step), value[step]))
                elif isinstance(value, list) and -len(value) <= step < len(value):
                    after.append(((*parts, step % len(value)), value[step]))
            if not after:
                return
            found = after
        for parts, _ in found:
            yield parts


class Library:
    """Any other path: python-jsonpath's compiled path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._path = JSONPATH.compile(source)

    def parts(self, document: Any) -> Iterator[tuple[Any, ...]]:
        for match in self._path.finditer(document):
            yield tuple(match.parts)


def compile_path(source: str) -> Path:
    """``Simple`` when the path is one, else the library's (which validated it already)."""
    simple = Simple.parse(source)
    return simple if simple is not None else Library(source)


def _tree(paths: Iterable[Path], document: Any) -> Tree | _All | None:
    if isinstance(document, str):
        # python-jsonpath parses a str argument as JSON text (a body that is the JSON
        # string "[" raised, one that is the string '{"a": 1}' would be searched): a
        # string document has no parts, so only a path selecting the root matches it.
        return ALL if any(path.source == "$" for path in paths) else None
    tree: Tree | _All = {}
    for path in paths:
        for parts in path.parts(document):
            if isinstance(tree, _All):
                return tree
            tree = _insert(tree, parts)
    return tree or None


def check_depth(document: Any, raw_size: int) -> None:
    """Raise ``TooDeep`` past ``MAX_DEPTH`` levels. Iterative; skipped for documents too
    small to be that deep."""
    if raw_size < 2 * MAX_DEPTH:
        return
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise TooDeep(f"nested deeper than {MAX_DEPTH}")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, dict | list))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, dict | list))


class Selector:
    """Applies one body rule. Built once per profile; ``select`` is thread-safe."""

    def __init__(self, rule: BodyRule) -> None:
        self.rule = rule
        self._keep = [compile_path(p) for p in rule.keep]
        self._drop = [compile_path(p) for p in rule.drop]

    def select(self, document: Any) -> Any:
        """The selected part of ``document``, or ``MISSING`` when nothing matched."""
        keep = _tree(self._keep, document)
        if keep is None:
            return MISSING
        drop = _tree(self._drop, document)
        return _build(document, keep, drop)


def _build(value: Any, keep: Tree | _All, drop: Tree | _All | None) -> Any:
    if drop is ALL:
        return MISSING
    if keep is ALL and drop is None:
        return value
    if isinstance(value, dict):
        items: Iterable[tuple[Any, Any]] = value.items()
        out: dict[str, Any] = {}
        for key, child in items:
            kept = _child(keep, key)
            if kept is not None:
                built = _build(child, kept, _child(drop, key))
                if built is not MISSING:
                    out[key] = built
        return out
    if isinstance(value, list):
        selected = []
        for index, child in enumerate(value):
            kept = _child(keep, index)
            if kept is not None:
                built = _build(child, kept, _child(drop, index))
                if built is not MISSING:
                    selected.append(built)
        return selected
    return value


def _child(tree: Tree | _All | None, part: Any) -> Tree | _All | None:
    if tree is None or isinstance(tree, _All):
        return tree
    child: Tree | _All | None = tree.get(part)
    return child
