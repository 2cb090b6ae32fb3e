"""Errors as ``application/problem+json`` (RFC 9457) with an HTTP status (docs/DESIGN.md §13).

Every failure the gateway answers is one problem document::

    {"type": "https://hermesx.dev/problems/not_found", "title": "not_found",
     "status": 404, "detail": "no atom named 'c9'", "kind": "not_found"}

``kind`` is the hermesx error kind (docs/DESIGN.md §9) or one of the
gateway's own (``bad_json``, ``too_large``, ``slow_body``, ``cross_site``,
``unauthorized``, ``bad_idempotency_key``, ``idempotency_key_reused``, ``internal``,
``not_found`` for an unknown path). :data:`STATUS_BY_KIND` is the one
mapping from kinds to statuses.
"""

from __future__ import annotations

import json
from typing import Any, Final

from starlette.responses import Response

from hermesx.core.errors import HermesError, OutcomeUnknownError

__all__ = ["STATUS_BY_KIND", "Problem", "problem_response", "status_for_kind"]

PROBLEM_TYPE: Final = "application/problem+json"

STATUS_BY_KIND: Final[dict[str, int]] = {
    # the request
    "bad_json": 400,
    "configuration": 400,
    "invalid_name": 400,
    "invalid_pattern": 400,
    "bad_module": 400,
    "bad_idempotency_key": 400,
    "unauthorized": 401,
    "cross_site": 403,
    "not_authorized": 403,
    "not_found": 404,
    "method": 404,
    "not_allowed": 405,
    "slow_body": 408,
    "name_taken": 409,
    "request_expired": 409,
    "migration": 409,
    "not_active_here": 409,
    "too_large": 413,
    "payload_too_large": 413,
    "idempotency_key_reused": 422,
    # the atom
    "trap": 500,
    "memory": 500,
    "call_cycle": 500,
    "atom": 500,
    "internal": 500,
    # the cluster
    "unreachable": 503,
    "communication": 503,
    "no_quorum": 503,
    "capacity": 503,
    "storage": 503,
    "checkpoint_damaged": 503,
    "home_moved": 503,
    "busy": 503,
    "timeout": 504,
    "deadline": 504,
    "outcome_unknown": 504,
}


# Refusals answered before the whole body was read.
_BODY_LEFT_UNREAD: Final = frozenset({"too_large", "slow_body"})


def status_for_kind(kind: str) -> int:
    return STATUS_BY_KIND.get(kind, 500)


class Problem(Exception):
    """A failure of the gateway's own (not a HermesError), answered as a problem document."""

    def __init__(self, kind: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.extra = extra


def problem_response(exc: Problem | HermesError, headers: dict[str, str] | None = None) -> Response:
    """The problem document of ``exc``."""
    if isinstance(exc, Problem):
        kind, detail, extra = exc.kind, exc.detail, dict(exc.extra)
    else:
        kind, detail, extra = exc.kind, str(exc), {}
        if isinstance(exc, OutcomeUnknownError) and exc.request_id:
            extra["request_id"] = exc.request_id
    status = status_for_kind(kind)
    body = {
        "type": f"https://hermesx.dev/problems/{kind}",
        "title": kind,
        "status": status,
        "detail": detail,
        "kind": kind,
        **extra,
    }
    if kind == "unauthorized":
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="hermesx"'}
    if kind in _BODY_LEFT_UNREAD:
        # What is left of the body would be read as the next request: close instead.
        headers = {**(headers or {}), "Connection": "close"}
    return Response(
        json.dumps(body).encode(), status_code=status, media_type=PROBLEM_TYPE, headers=headers
    )
