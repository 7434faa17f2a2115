"""What every event records of the request (``sidecar/proxy/recorded.py``): bounded work
and memory for whatever a client sends."""

from __future__ import annotations

from sidecar.proxy import recorded
from sidecar.proxy.recorded import safe_path


def test_query_strings_and_long_paths_do_not_grow_the_cache() -> None:
    recorded._safe.cache_clear()
    for i in range(100):
        assert safe_path(f"/v1/models?page={i}") == "/v1/models"
    info = recorded._safe.cache_info()
    assert (info.misses, info.hits) == (1, 99)
    long_path = "/v1/" + "a" * 5000
    assert safe_path(long_path) == "/v1/*"
    assert recorded._safe.cache_info().currsize == 1  # worked out, not kept
