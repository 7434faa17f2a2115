"""``HeaderMemo``: keys that tell every input apart and hold no raw value; bounded LRU."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.privacy.memo import HeaderMemo

HEADERS = st.lists(st.tuples(st.text(max_size=8), st.text(max_size=12)), max_size=3).map(tuple)
INPUTS = st.tuples(st.sampled_from(["sampled", "not_sampled", "always_capture:errors"]),
                   HEADERS, HEADERS)
MEMO = HeaderMemo()


@given(INPUTS, INPUTS)
def test_keys_differ_exactly_when_the_inputs_do(
    a: tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]],
    b: tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]],
) -> None:
    digest = "sha256:" + "ab" * 32
    assert (MEMO.key(digest, *a) == MEMO.key(digest, *b)) == (a == b)


def test_a_line_break_in_a_value_cannot_forge_another_key() -> None:
    memo = HeaderMemo()
    one = memo.key("d", "r", (("a", "x\n(('b', 'y'),)"),), ())
    two = memo.key("d", "r", (("a", "x"),), (("b", "y"),))
    assert one != two


def test_keys_hold_no_raw_value_and_depend_on_the_process_secret() -> None:
    request = (("x-forwarded-for", "203.0.113.7"),)
    first, second = HeaderMemo(), HeaderMemo()
    key = first.key("d", "not_sampled", request, ())
    assert len(key) == 16 and b"203.0.113.7" not in key
    assert key != second.key("d", "not_sampled", request, ())


def test_least_recently_used_goes_first_and_the_size_holds() -> None:
    memo = HeaderMemo(size=2)
    memo.put(b"a", {"n": 1})
    memo.put(b"b", {"n": 2})
    assert memo.get(b"a") == {"n": 1}  # now b is the least recently used
    memo.put(b"c", {"n": 3})
    assert memo.get(b"b") is None and memo.get(b"a") == {"n": 1} and memo.get(b"c") == {"n": 3}
    assert (memo.hits, memo.misses) == (3, 1)
