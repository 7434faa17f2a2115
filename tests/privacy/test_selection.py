"""JSON path selection: the direct walker (``Simple``) matches python-jsonpath exactly."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar.privacy.profile import load_profile
from sidecar.privacy.rules import BodyRule
from sidecar.privacy.selection import Library, Selector, Simple, compile_path

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)
NAMES = ["a", "b", "messages", "content", "x y", "_"]

documents = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(NAMES), children, max_size=4),
    max_leaves=25)

segments = st.sampled_from([".a", ".b", ".messages", ".content", "[*]", ".*", "[0]", "[1]",
                            "[-1]", "[-3]", "['a']", '["x y"]', "['_']", "[3]"])
paths = st.lists(segments, max_size=4).map(lambda parts: "$" + "".join(parts))


@SETTINGS
@given(paths, documents)
@example("$[-1]", [1, [2, 3]])
@example("$.a[*][-1]", {"a": [[1, 2], {"b": 1}, []]})
@example("$[0].*['x y']", [{"a": {"x y": 1}, "b": [2]}])
@example("$.content[3]", {"content": "abcd"})
def test_simple_paths_select_what_the_library_selects(source: str, document: Any) -> None:
    simple = Simple.parse(source)
    assert simple is not None, source
    assert list(simple.parts(document)) == list(Library(source).parts(document))


def test_every_shipped_profile_path_takes_the_direct_walker() -> None:
    for name in ("strict", "standard", "metadata-only"):
        profile = load_profile(name)
        for rule in (profile.request, profile.response):
            for source in (*rule.keep, *rule.drop):
                assert isinstance(compile_path(source), Simple), (name, source)


def test_other_paths_go_to_the_library_and_still_select() -> None:
    for source in ("$..content", "$.messages[?@.role == 'user'].content", "$.messages[0:2]",
                   "$.a['b','c']"):
        assert isinstance(compile_path(source), Library), source
    document = {"messages": [{"role": "system", "content": "s"},
                             {"role": "user", "content": "u"}]}
    picked = Selector(BodyRule(keep=("$.messages[?@.role == 'user'].content",))).select(document)
    assert picked == {"messages": [{"content": "u"}]}
