"""Intended-use policy: alerts on requests outside what the deployment is for (issue 5,
item 4). Enforceable: everything it reads is known before the request is forwarded.

Configured as the ``params`` of a ``policy`` detector; every constraint is optional and
an empty policy allows everything (the default file ships it off, with an example)::

    - name: intended-use
      type: policy
      mode: enforce                            # 403 on the request path (issue 5, item 5)
      params:
        routes: [/v1/chat/completions]         # event "route"
        methods: [POST]                        # event "method"
        content_types: [application/json]      # headers.request.content-type, no parameters
        purpose_header: x-intended-purpose     # headers.request.<name> (allow-listed headers)
        purposes: [customer-support]           # ...must be one of these (empty: any, if present)
        params:                                # payload.request.<name>, else features.params.<name>
          temperature: {min: 0, max: 1}
          max_tokens: {max: 1024}
          model: {allowed: [demo]}
          user: {required: true}

Request parameters come from the captured payload when the profile captured it, else
from ``features.params`` (the sidecar's masking worker copies declared parameters there;
the same contract as ``detectors.text``); a parameter found in neither is a violation
only when ``required``. Statistic: the number of violated constraints (threshold 1);
``observe`` (see ``detectors.base``) gives it for every event, 0 included.

>>> det = Policy(routes=["/v1/chat/completions"], params={"temperature": {"max": 1}})
>>> det.update({"route": "/v1/chat/completions", "payload": {"request": {"temperature": 0.2}}})
[]
>>> [a.details["violations"] for a in det.update({"route": "/admin",
...     "features": {"params": {"temperature": 1.5}}})]
[['route /admin not allowed', 'temperature 1.5 > max 1']]
>>> det.observe({"route": "/admin"})
(1.0, 1.0)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detectors.abuse import _Abuse
from detectors.base import Alert, Observation, ParamError
from detectors.clients import features, number

_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,40}/[a-z0-9][a-z0-9!#$&^_.+-]{0,40}")

_RULE_KEYS = ("min", "max", "allowed", "required")


def _strings(key: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ParamError(key, "must be a list of strings")


@dataclass(frozen=True, slots=True)
class PolicyParams:
    routes: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    purpose_header: str = ""
    purposes: list[str] = field(default_factory=list)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("routes", "methods", "content_types", "purposes"):
            _strings(key, getattr(self, key))
        for ctype in self.content_types:
            # A request's type is compared without its parameters (charset, boundary), so
            # an entry with parameters, or no type/subtype at all, could never match.
            if not _MEDIA_TYPE.fullmatch(ctype.strip().lower()):
                raise ParamError("content_types", f"{ctype[:64]!r} is not a media type "
                                 "without parameters (e.g. application/json)")
        if self.purposes and not self.purpose_header:
            raise ParamError("purposes", "needs purpose_header")
        if not isinstance(self.params, dict):
            raise ParamError("params", "must be a mapping of parameter name to rule")
        for name, rule in self.params.items():
            at = f"params.{name}"
            if not isinstance(rule, dict) or not set(rule) <= set(_RULE_KEYS):
                raise ParamError(at, f"must be a mapping with keys among {_RULE_KEYS}")
            for bound in ("min", "max"):
                if bound in rule and number(rule[bound]) is None:
                    raise ParamError(f"{at}.{bound}", "must be a number")
            low, high = number(rule.get("min")), number(rule.get("max"))
            if low is not None and high is not None and low > high:
                raise ParamError(f"{at}.min", "must be at most max: no value could pass")
            if "allowed" in rule and not isinstance(rule["allowed"], list):
                raise ParamError(f"{at}.allowed", "must be a list")
            if not isinstance(rule.get("required", False), bool):
                raise ParamError(f"{at}.required", "must be true or false")


def _header(event: Mapping[str, Any], name: str) -> str | None:
    headers = event.get("headers")
    request = headers.get("request") if isinstance(headers, Mapping) else None
    if not isinstance(request, Mapping):
        return None
    value = request.get(name)
    return value if isinstance(value, str) else None


def _param(event: Mapping[str, Any], name: str) -> Any:
    payload = event.get("payload")
    request = payload.get("request") if isinstance(payload, Mapping) else None
    if isinstance(request, Mapping) and name in request:
        return request[name]
    params = features(event).get("params")
    return params.get(name) if isinstance(params, Mapping) else None


class Policy(_Abuse):
    """Requests outside the configured intended use (see the module docstring)."""

    type_name = "policy"
    kind = "policy"

    def __init__(self, *, name: str = "policy", **params: Any) -> None:
        self.params = PolicyParams(**params)
        self.name = name
        p = self.params
        self.routes = frozenset(p.routes)
        self.methods = frozenset(m.upper() for m in p.methods)
        self.content_types = frozenset(c.strip().lower() for c in p.content_types)
        self.purpose_header = p.purpose_header.lower()
        self.purposes = frozenset(p.purposes)

    def reset(self) -> None:
        pass

    def update(self, event: Mapping[str, Any]) -> list[Alert]:
        v = self._violations(event)
        if not v:
            return []
        return [self._alert(
            f"request outside the intended use: {'; '.join(v)}", float(len(v)), 1.0, None,
            details={"violations": v}, feature=v[0].split(" ")[0])]

    def observe(self, event: Mapping[str, Any]) -> Observation | None:
        """After ``update(event)``: the number of violated constraints, and 1."""
        return float(len(self._violations(event))), 1.0

    def _violations(self, event: Mapping[str, Any]) -> list[str]:
        v: list[str] = []
        route, method = event.get("route"), event.get("method")
        if self.routes and (not isinstance(route, str) or route not in self.routes):
            v.append(f"route {str(route)[:64]} not allowed")
        if self.methods and (not isinstance(method, str) or method.upper() not in self.methods):
            v.append(f"method {str(method)[:16]} not allowed")
        if self.content_types:
            ctype = (_header(event, "content-type") or "").split(";")[0].strip().lower()
            if ctype not in self.content_types:
                # Named only when it is a media type: the client wrote it, and alerts
                # must not carry what a client can put in them.
                shown = ctype if _MEDIA_TYPE.fullmatch(ctype) else "(not a media type)"
                v.append(f"content type {shown if ctype else '(none)'} not allowed")
        if self.purpose_header:
            purpose = _header(event, self.purpose_header)
            if purpose is None:
                v.append(f"no {self.purpose_header} header")
            elif self.purposes and purpose not in self.purposes:
                v.append("purpose not among the declared purposes")
        for name, rule in self.params.params.items():
            v += _check_param(name, rule, _param(event, name))
        return v


def _check_param(name: str, rule: Mapping[str, Any], value: Any) -> list[str]:
    if value is None:
        return [f"{name} missing"] if rule.get("required") else []
    if "allowed" in rule and value not in rule["allowed"]:
        # Not the value itself: a parameter such as "user" can identify a person, and
        # alerts go out unmasked. The allowed values are the operator's own.
        return [f"{name} not in its allowed values"]
    low, high = rule.get("min"), rule.get("max")
    if low is None and high is None:
        return []
    x = number(value)
    if x is None:
        return [f"{name} is not a number"]
    if low is not None and x < low:
        return [f"{name} {x:g} < min {low:g}"]
    if high is not None and x > high:
        return [f"{name} {x:g} > max {high:g}"]
    return []
