"""The transition insight's part of the OpenAPI document (edge.admin.openapi merges it)."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_TENANT = {
    "name": "tenant",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"},
}
_MS = {"type": ["integer", "null"], "description": "upper bound of the p95's bucket, in ms"}

INSIGHT_SCHEMAS: dict[str, Any] = {
    "Referrers": {
        "type": "object",
        "required": ["tenant", "referrers"],
        "properties": {
            "tenant": {"type": "string"},
            "referrers": {
                "type": "array",
                "description": "most hits first",
                "items": {
                    "type": "object",
                    "required": ["referrer", "hits", "last_seen"],
                    "properties": {
                        "referrer": {
                            "type": "string",
                            "description": "the outside page, without query or fragment",
                        },
                        "hits": {"type": "integer"},
                        "last_seen": {"type": "string", "format": "date-time"},
                    },
                },
            },
        },
    },
    "Parity": {
        "type": "object",
        "required": [
            "tenant",
            "mirrored",
            "agreeing",
            "disagreeing",
            "legacy_ms_p95",
            "new_ms_p95",
        ],
        "properties": {
            "tenant": {"type": "string"},
            "mirrored": {"type": "integer"},
            "agreeing": {"type": "integer"},
            "disagreeing": {
                "type": "array",
                "description": "most hits first",
                "items": {
                    "type": "object",
                    "required": ["path", "legacy_status", "new_status", "hits"],
                    "properties": {
                        "path": {"type": "string", "description": "the legacy path"},
                        "new_path": {"type": "string", "description": "where it maps"},
                        "legacy_status": {"type": "integer"},
                        "new_status": {"type": "integer", "description": "0: no answer"},
                        "hits": {"type": "integer"},
                        "blocks_activation": {"type": "boolean"},
                    },
                },
            },
            "legacy_ms_p95": _MS,
            "new_ms_p95": _MS,
        },
    },
}


def _report(name: str, summary: str, description: str) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{name}"}
    return {
        "parameters": [_TENANT],
        "get": {
            "summary": summary,
            "description": description,
            "responses": {
                "200": {
                    "description": summary,
                    "content": {"application/json": {"schema": schema}},
                },
                **{
                    status: {
                        "description": why,
                        "content": {"application/json": {"schema": _ERROR}},
                    }
                    for status, why in (
                        ("400", "bad input: the message names the parameter"),
                        ("503", "the mode store cannot be reached"),
                    )
                },
            },
        },
    }


INSIGHT_PATHS: dict[str, Any] = {
    "/api/tenants/{tenant}/referrers": _report(
        "Referrers",
        "The outside pages that still send customers to the legacy portal",
        "From the Referer of legacy-front requests, forwarded or redirected, of tenants with a "
        "routing key; the portals' own hosts left out, bounded per tenant.",
    ),
    "/api/tenants/{tenant}/parity": _report(
        "Parity",
        "How the new portal answered the legacy reads the shadow mirrored",
        "With [shadow] sample_rate above 0. An unforced move to active is refused (409) while a "
        "path blocks activation: legacy 2xx, new 404, 5xx or no answer.",
    ),
}
