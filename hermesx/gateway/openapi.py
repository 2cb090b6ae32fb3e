"""The gateway's OpenAPI 3.1 document, served at ``/v1/openapi.json`` (docs/DESIGN.md §13)."""

from __future__ import annotations

from typing import Any

from hermesx.gateway.problems import STATUS_BY_KIND

__all__ = ["openapi_document"]

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_TARGET = {
    "name": "target",
    "in": "path",
    "required": True,
    "description": "the atom's name or GUID",
    "schema": {"type": "string"},
}
_TAD = {
    "type": ["object", "null"],
    "properties": {"node": {"type": "string"}, "age": {"type": "integer"}},
}


def _param(name: str, where: str, kind: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": {"type": kind}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _get(summary: str, schema: dict[str, Any], params: list[Any] | None = None) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": params or [],
            "responses": {"200": _json(schema, summary), "default": _PROBLEM},
        }
    }


def openapi_document() -> dict[str, Any]:
    atom = {
        "type": "object",
        "properties": {
            "guid": {"type": "string"},
            "name": {"type": ["string", "null"]},
            "node": {"type": ["string", "null"], "description": "null while dormant"},
            "age": {"type": "integer"},
            "state": {"enum": ["active", "dormant"]},
            "storesite": {"type": "string"},
            "policy": {"type": "object"},
            "aliases": {"type": "array", "items": {"type": "string"}},
        },
    }
    node = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "address": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "incarnation": {"type": "string"},
            "state": {"enum": ["live", "fenced", "silent"]},
            "atoms": {"type": ["integer", "null"]},
            "calls_per_s": {"type": ["number", "null"]},
        },
    }
    action_body = {
        "required": False,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"node": {"type": "string"}}}
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hermesx gateway",
            "version": "1",
            "description": "Call atoms and watch the cluster over HTTP (docs/DESIGN.md §13).",
        },
        "paths": {
            "/v1/atoms/{target}/{method}": {
                "post": {
                    "summary": "invoke a method: the JSON body is the argument (msgpack inside)",
                    "parameters": [
                        _TARGET,
                        _param("method", "path", "string", True),
                        {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
                        {"name": "trace", "in": "query", "schema": {"type": "boolean"}},
                        {"name": "timeout", "in": "query", "schema": {"type": "number"}},
                    ],
                    "requestBody": {"content": {"application/json": {"schema": {}}}},
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "result": {},
                                    "guid": {"type": "string"},
                                    "tad": _TAD,
                                    "request_id": {"type": "string"},
                                    "trace": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                            "the method's result",
                        ),
                        "default": _PROBLEM,
                    },
                }
            },
            "/v1/atoms/{target}/actions/{action}": {
                "post": {
                    "summary": 'migrate (body {"node": NAME}), passivate or checkpoint an atom',
                    "parameters": [
                        _TARGET,
                        {
                            "name": "action",
                            "in": "path",
                            "required": True,
                            "schema": {"enum": ["migrate", "passivate", "checkpoint"]},
                        },
                    ],
                    "requestBody": action_body,
                    "responses": {"200": _json({"type": "object"}, "done"), "default": _PROBLEM},
                }
            },
            "/v1/atoms": _get("every atom, where it is", {"type": "array", "items": atom}),
            "/v1/atoms/{target}": _get("one atom: location, age, policy, aliases", atom, [_TARGET]),
            "/v1/atoms/{target}/chain": _get(
                "the atom's TAD chain: every live node's stash entry for it",
                {"type": "object"},
                [_TARGET],
            ),
            "/v1/nodes": _get("the live nodes", {"type": "array", "items": node}),
            "/v1/lookup": _get(
                "atoms whose name (alias in scope) matches a pattern",
                {"type": "array", "items": {"type": "object"}},
                [
                    _param("pattern", "query", "string", True),
                    {"name": "scope", "in": "query", "schema": {"type": "string"}},
                    {"name": "all", "in": "query", "schema": {"type": "boolean"}},
                ],
            ),
            "/v1/events": {
                "get": {
                    "summary": "server-sent events: `state` (nodes and atoms) and `change` events",
                    "responses": {"200": {"description": "text/event-stream"}},
                }
            },
        },
        "components": {
            "responses": {
                "Problem": {
                    "description": "a problem (RFC 9457); kind -> status: "
                    + ", ".join(f"{k} {v}" for k, v in sorted(STATUS_BY_KIND.items())),
                    "content": {
                        "application/problem+json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "type": {"type": "string"},
                                    "title": {"type": "string"},
                                    "status": {"type": "integer"},
                                    "detail": {"type": "string"},
                                    "kind": {"type": "string"},
                                },
                            }
                        }
                    },
                }
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
