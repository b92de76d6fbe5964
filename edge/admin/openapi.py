"""The admin API's OpenAPI 3.1 document, written by hand beside the routes it describes.

tests/test_admin_api.py keeps it truthful: every route of the admin app is in it (and nothing
else), it passes openapi-spec-validator, and real answers match its schemas.
"""

from __future__ import annotations

from typing import Any

from edge.admin.openapi_insight import INSIGHT_PATHS, INSIGHT_SCHEMAS


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "bad input: the message names the parameter or field",
        401: "no valid bearer token: nothing changed",
        404: "no such thing",
        409: "refused (a backward move without force, a schedule that cannot be): nothing changed",
        503: "the mode store cannot be reached",
    }
    return {str(status): _json(_ref("Error"), reasons[status]) for status in statuses}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


TENANT_ID_SCHEMA = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}
TENANT_PARAM = {
    "name": "tenant",
    "in": "path",
    "required": True,
    "schema": TENANT_ID_SCHEMA,
}
LIMIT = {"type": "integer", "minimum": 1, "maximum": 1000}
MODE = {"type": "string", "enum": ["legacy", "setup", "active"]}
AUTH: list[dict[str, list[str]]] = [{"bearer": []}]
STRING_OR_NULL = {"type": ["string", "null"]}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
        "additionalProperties": True,
    },
    "Tenant": {
        "type": "object",
        "required": ["tenant", "mode"],
        "properties": {
            "tenant": {"type": "string"},
            "mode": {"type": "string", "enum": ["legacy", "setup", "active", "invalid"]},
            "stored": {"type": "string", "description": "the stored value, when it is no mode"},
        },
    },
    "Change": {
        "type": "object",
        "required": ["tenant", "actor", "at", "from", "to", "forced", "via", "changed"],
        "properties": {
            "tenant": {"type": "string"},
            "actor": {"type": "string"},
            "at": {"type": "string", "format": "date-time"},
            "from": {**STRING_OR_NULL, "description": "the stored value before; null: no key"},
            "to": MODE,
            "forced": {"type": "boolean"},
            "via": {"type": "string", "description": "cli, api, bulk, dashboard, schedule:ID"},
            "changed": {"type": "boolean"},
            "note": {
                "type": "string",
                "description": "an activation's readiness: the coverage, or that it was forced",
            },
        },
    },
    "Readiness": {
        "type": "object",
        "required": ["tenant", "at", "requests", "resolved", "paths", "coverage", "ready"],
        "properties": {
            "tenant": {"type": "string"},
            "at": {"type": "string", "format": "date-time"},
            "requests": {"type": "integer", "description": "recorded legacy requests"},
            "resolved": {"type": "integer", "description": "of them, landing on a 2xx or 3xx"},
            "paths": {"type": "integer"},
            "coverage": {
                "type": ["number", "null"],
                "description": "resolved / requests; null: no recorded traffic",
            },
            "threshold": {"type": "number"},
            "ready": {"type": "boolean"},
            "headline": {"type": "string"},
            "worst": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["path", "target", "requests", "status"],
                    "properties": {
                        "path": {"type": "string", "description": "the legacy path"},
                        "target": {"type": "string", "description": "where it lands"},
                        "requests": {"type": "integer"},
                        "status": {"type": ["integer", "null"]},
                        "error": STRING_OR_NULL,
                        "resolves": {"type": "boolean"},
                    },
                },
            },
        },
    },
    "Watch": {
        "type": "object",
        "required": ["tenant", "activated_at", "watching", "baseline", "after", "alerts"],
        "properties": {
            "tenant": {"type": "string"},
            "activated_at": {**STRING_OR_NULL, "format": "date-time"},
            "ends": {**STRING_OR_NULL, "format": "date-time"},
            "watching": {"type": "boolean"},
            "baseline": {
                "type": "object",
                "description": "the setup preview's responses by status class",
                "additionalProperties": {"type": "integer"},
            },
            "after": {
                "type": "object",
                "description": "responses by status class since activation",
                "additionalProperties": {"type": "integer"},
            },
            "shares": {"type": "object"},
            "threshold": {"type": "number"},
            "alerts": {"type": "array", "items": {"type": "string", "enum": ["5xx", "404"]}},
            "summary": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Schedule": {
        "type": "object",
        "required": ["id", "tenant", "mode", "at", "actor", "force", "created"],
        "properties": {
            "id": {"type": "string"},
            "tenant": {"type": "string"},
            "mode": MODE,
            "at": {"type": "string", "format": "date-time"},
            "actor": {"type": "string"},
            "force": {"type": "boolean"},
            "created": {"type": "string", "format": "date-time"},
        },
    },
    "MoveResult": {
        "type": "object",
        "required": ["tenant", "from", "to", "result"],
        "properties": {
            "tenant": {"type": "string"},
            "from": STRING_OR_NULL,
            "to": MODE,
            "result": {"type": "string", "enum": ["moved", "unchanged", "refused"]},
            "reason": {"type": "string"},
        },
    },
    "Actor": {
        "type": "string",
        "minLength": 1,
        "maxLength": 200,
        "description": "who makes the change, for the audit log (default admin-api)",
    },
    **INSIGHT_SCHEMAS,
}

PATHS: dict[str, Any] = {
    "/healthz": {
        "get": {
            "summary": "The process is alive",
            "responses": {"200": _json({"type": "object"}, "alive")},
        }
    },
    "/readyz": {
        "get": {
            "summary": "Ready to route: 503 until the mode store has been reached",
            "responses": {
                "200": _json({"type": "object"}, "ready"),
                "503": _json(_ref("Error"), "not ready"),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (OpenMetrics when the Accept header asks for it)",
            "responses": {
                "200": {
                    "description": "the metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/api/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
        }
    },
    "/api/tenants": {
        "get": {
            "summary": "One page of the tenants that have a mode set",
            "description": "Tenants without a key are legacy and not listed. A page may hold "
            "fewer than limit tenants and still have a next one (each call does a bounded "
            "amount of work): follow next_cursor until it is null.",
            "parameters": [
                _query("mode", "only tenants in this mode", MODE),
                _query("q", "only tenant ids containing this", {"type": "string"}),
                _query("cursor", "next_cursor of the previous page", {"type": "string"}),
                _query("limit", "about this many tenants (default 100)", LIMIT),
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["tenants", "next_cursor"],
                        "properties": {
                            "tenants": {"type": "array", "items": _ref("Tenant")},
                            "next_cursor": STRING_OR_NULL,
                        },
                    },
                    "a page of tenants",
                ),
                **_errors(400, 503),
            },
        }
    },
    "/api/tenants:counts": {
        "get": {
            "summary": "How many tenants have each stored mode",
            "description": "A count is one pass over every key (about a second per 100,000 "
            "tenants), so it is reused for up to 30 s, or until a change made through this "
            "instance; counted_at says when it was taken.",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["counts", "total", "counted_at"],
                        "properties": {
                            "counts": {
                                "type": "object",
                                "required": ["legacy", "setup", "active", "invalid"],
                                "additionalProperties": {"type": "integer"},
                            },
                            "total": {"type": "integer"},
                            "counted_at": {"type": "string", "format": "date-time"},
                        },
                    },
                    "the counts",
                ),
                **_errors(503),
            },
        }
    },
    "/api/tenants:bulk": {
        "post": {
            "summary": "Move many tenants, all or nothing",
            "description": "Every move is checked first (tenant ids, modes, each tenant once, "
            "forward unless force): any problem refuses the whole request with 409 and a list "
            "of problems, and nothing changes. Then each move is made atomically and audited; "
            "dry_run stops before the first change.",
            "security": AUTH,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "tenants": {"type": "array", "items": {"type": "string"}},
                                "mode": MODE,
                                "moves": {
                                    "type": "array",
                                    "description": "instead of tenants and mode",
                                    "items": {
                                        "type": "object",
                                        "required": ["tenant", "mode"],
                                        "properties": {
                                            "tenant": {"type": "string"},
                                            "mode": {"type": "string"},
                                        },
                                    },
                                },
                                "force": {"type": "boolean", "default": False},
                                "dry_run": {"type": "boolean", "default": False},
                                "actor": _ref("Actor"),
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["dry_run", "summary", "results"],
                        "properties": {
                            "dry_run": {"type": "boolean"},
                            "summary": {
                                "type": "object",
                                "required": ["moved", "unchanged", "refused"],
                                "additionalProperties": {"type": "integer"},
                            },
                            "results": {"type": "array", "items": _ref("MoveResult")},
                        },
                    },
                    "what was done to each tenant (or would be, in a dry run)",
                ),
                "409": _json(
                    {
                        "allOf": [_ref("Error")],
                        "type": "object",
                        "required": ["problems"],
                        "properties": {
                            "problems": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["index", "tenant", "reason"],
                                    "properties": {
                                        "index": {"type": "integer"},
                                        "tenant": {"type": "string"},
                                        "reason": {"type": "string"},
                                    },
                                },
                            }
                        },
                    },
                    "some moves cannot be made, so none was",
                ),
                **_errors(400, 401, 503),
            },
        }
    },
    "/api/tenants/{tenant}": {
        "parameters": [TENANT_PARAM],
        "get": {
            "summary": "A tenant's mode (legacy when it has no key)",
            "responses": {"200": _json(_ref("Tenant"), "the tenant"), **_errors(400, 503)},
        },
        "put": {
            "summary": "Move a tenant: forward only unless force",
            "security": AUTH,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["mode"],
                            "properties": {
                                "mode": MODE,
                                "force": {"type": "boolean", "default": False},
                                "actor": _ref("Actor"),
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json(
                    {
                        "allOf": [_ref("Tenant")],
                        "type": "object",
                        "required": ["change"],
                        "properties": {"change": _ref("Change")},
                    },
                    "moved, or already there (change.changed false)",
                ),
                **_errors(400, 401, 409, 503),
            },
        },
    },
    "/api/tenants/{tenant}/history": {
        "parameters": [TENANT_PARAM],
        "get": {
            "summary": "A tenant's audited changes, newest first",
            "parameters": [_query("limit", "at most this many (default 100)", LIMIT)],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["tenant", "history"],
                        "properties": {
                            "tenant": {"type": "string"},
                            "history": {"type": "array", "items": _ref("Change")},
                        },
                    },
                    "the audit entries",
                ),
                **_errors(400, 503),
            },
        },
    },
    "/api/tenants/{tenant}/readiness": {
        "parameters": [TENANT_PARAM],
        "get": {
            "summary": "Will the tenant's deep links resolve on the new portal?",
            "description": "Maps each recorded legacy path through the path rules and probes "
            "the new portal for it (rate-limited), so it may take seconds. An unforced move to "
            "active is refused (409, with this report) while coverage is below "
            "[policy].activation_coverage.",
            "responses": {
                "200": _json(_ref("Readiness"), "the readiness report"),
                **_errors(400, 503),
            },
        },
    },
    "/api/tenants/{tenant}/watch": {
        "parameters": [TENANT_PARAM],
        "get": {
            "summary": "The watch after activation: 5xx and 404 shares against the preview's",
            "responses": {"200": _json(_ref("Watch"), "the watch"), **_errors(400, 503)},
        },
    },
    "/api/tenants/{tenant}/schedule": {
        "parameters": [TENANT_PARAM],
        "post": {
            "summary": "Schedule a move for a future instant",
            "description": "Refused (409) when the instant is not in the future, or when the "
            "move goes backwards without force from the mode the tenant will have by then. "
            "When due, one edge instance makes it, checked again atomically.",
            "security": AUTH,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["mode", "at"],
                            "properties": {
                                "mode": MODE,
                                "at": {"type": "string", "format": "date-time"},
                                "force": {"type": "boolean", "default": False},
                                "actor": _ref("Actor"),
                            },
                        }
                    }
                },
            },
            "responses": {
                "201": _json(
                    {
                        "type": "object",
                        "required": ["schedule"],
                        "properties": {"schedule": _ref("Schedule")},
                    },
                    "scheduled",
                ),
                **_errors(400, 401, 409, 503),
            },
        },
    },
    "/api/schedules": {
        "get": {
            "summary": "The pending scheduled moves, soonest first",
            "parameters": [
                _query("tenant", "only this tenant's", TENANT_ID_SCHEMA),
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["schedules"],
                        "properties": {"schedules": {"type": "array", "items": _ref("Schedule")}},
                    },
                    "the schedules",
                ),
                **_errors(400, 503),
            },
        }
    },
    "/api/schedules/{id}": {
        "parameters": [
            {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "delete": {
            "summary": "Cancel a pending schedule",
            "security": AUTH,
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["schedule", "cancelled"],
                        "properties": {
                            "schedule": _ref("Schedule"),
                            "cancelled": {"type": "boolean"},
                        },
                    },
                    "cancelled",
                ),
                **_errors(401, 404, 503),
            },
        },
    },
    **INSIGHT_PATHS,
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "edge admin API",
        "version": "1",
        "description": "Tenant modes of the portal migration edge. Reads are open on the admin "
        "listener; changes need the bearer token and are audited. Every error is "
        '{"error": "...", ...}.',
    },
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
}
