"""Route templates: map a raw path to a label from a small, fixed set.

Metrics and detectors group by route; raw paths would give unbounded label values
(model names, ids) and could carry personal data, so unknown paths become ``other``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

OTHER = "other"

DEFAULT_TEMPLATES = (
    # OpenAI-compatible servers (vLLM, TGI's Messages API, llama.cpp, Ollama's /v1)
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/moderations",
    "/v1/rerank",
    "/v1/audio/transcriptions",
    "/v1/images/generations",
    "/v1/models",
    # KServe / Triton open inference protocol v2, and KServe v1
    "/v2/models/{model}/infer",
    "/v2/models/{model}/versions/{version}/infer",
    "/v2/models/{model}/ready",
    "/v2/models/{model}",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2",
    "/v1/models/{model}:predict",
    "/v1/models/{model}:explain",
    "/v1/models/{model}",
    # Hugging Face TGI native
    "/generate",
    "/generate_stream",
    "/health",
    "/metrics",
)


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.sub(r"\\\{[A-Za-z_][A-Za-z0-9_]*\\\}", "[^/]+?", re.escape(template))
    return re.compile(f"^{pattern}/?$")


class RouteTable:
    """Classify paths by template.

    >>> table = RouteTable(["/v1/{name}/predict"])
    >>> table.classify("/v2/models/resnet/infer")
    '/v2/models/{model}/infer'
    >>> table.classify("/v1/models/iris:predict")
    '/v1/models/{model}:predict'
    >>> table.classify("/v1/fraud/predict"), table.classify("/admin/secret")
    ('/v1/{name}/predict', 'other')
    """

    def __init__(self, extra: Iterable[str] = ()) -> None:
        templates = (*extra, *DEFAULT_TEMPLATES)  # user templates win
        self._static = {t: t for t in templates if "{" not in t}
        self._patterns = [(_compile(t), t) for t in templates if "{" in t]
        self.classify = lru_cache(maxsize=4096)(self._classify)

    def _classify(self, path: str) -> str:
        static = self._static.get(path) or self._static.get(path.rstrip("/"))
        if static is not None:
            return static
        for pattern, template in self._patterns:
            if pattern.match(path):
                return template
        return OTHER
