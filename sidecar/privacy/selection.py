"""The part of a JSON body a profile keeps: ``keep`` paths, minus ``drop`` paths.

Paths are RFC 9535 JSONPath, compiled once per profile (python-jsonpath). The result keeps
the document's shape around what was selected: ``$.messages[*].content`` on a chat
request gives ``{"messages": [{"content": ...}, ...]}``. Arrays are compacted to the
selected elements, in order, so elements selected by two paths (``role`` and ``content``
of the same message) stay together. Nothing is copied that was not selected, and a
document nested deeper than ``MAX_DEPTH`` is refused rather than walked (no recursion
error, no quadratic blow-up on hostile input).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

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


def _tree(paths: Iterable[Any], document: Any) -> Tree | _All | None:
    if isinstance(document, str):
        # python-jsonpath parses a str argument as JSON text (a body that is the JSON
        # string "[" raised, one that is the string '{"a": 1}' would be searched): a
        # string document has no parts, so only a path selecting the root matches it.
        return ALL if any(str(path) == "$" for path in paths) else None
    tree: Tree | _All = {}
    for path in paths:
        for match in path.finditer(document):
            if isinstance(tree, _All):
                return tree
            tree = _insert(tree, tuple(match.parts))
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
        self._keep = [JSONPATH.compile(p) for p in rule.keep]
        self._drop = [JSONPATH.compile(p) for p in rule.drop]

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
