"""``UniqueKeyLoader``: YAML's safe loader, with a key given twice in one mapping refused.

YAML keeps the last of two equal keys without a word, so a second ``sample_rate`` or
``EMAIL_ADDRESS: keep`` further down a file would silently win. Every file the sidecar
reads (settings, privacy profiles, detectors) loads with this.

>>> import yaml
>>> yaml.load("a: 1\\nb: {c: 2}", Loader=UniqueKeyLoader)
{'a': 1, 'b': {'c': 2}}
>>> yaml.load("a: 1\\na: 2", Loader=UniqueKeyLoader)  # doctest: +ELLIPSIS
Traceback (most recent call last):
  ...
yaml.constructor.ConstructorError: duplicate key 'a'
  in "<unicode string>", line 2, column 1...
"""

from __future__ import annotations

from typing import Any

import yaml


class UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *anchor": merged keys may be overridden, as YAML means
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool):
                continue  # unhashable or odd keys: the loader's own error follows
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_problem(exc: yaml.YAMLError | RecursionError) -> str:
    """What is wrong, in one line, with its line number when the parser knows it."""
    if isinstance(exc, RecursionError):  # PyYAML composes nested collections recursively
        return "nested too deeply"
    mark = getattr(exc, "problem_mark", None)
    at = f" at line {mark.line + 1}" if mark is not None else ""
    said = [str(part) for part in (getattr(exc, "context", None), getattr(exc, "problem", None))
            if part]
    return f"{' '.join(', '.join(said or ['not YAML']).split())}{at}"
