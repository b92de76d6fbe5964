"""The admin API's routes as a table, and its OpenAPI 3.1 document built from that table and the
schemas of the models in ``edge/admin/models.py``.

tests/test_admin_api.py keeps it truthful: every route of the admin app is in it (and nothing
else), every ``$ref`` resolves, it passes openapi-spec-validator, and real answers match it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from edge.admin.body import BODY_MAX
from edge.admin.models import PATH_PARAMS, Body, Error

REF = "#/components/schemas/{model}"
REASONS = {
    400: "bad input: the message names the parameter or field",
    401: "no valid bearer token: nothing changed",
    404: "no such thing",
    409: "refused (a backward move without force, a schedule that cannot be): nothing changed",
    413: f"the body is over {BODY_MAX} bytes: nothing changed",
    503: "the mode store cannot be reached",
}


@dataclass(frozen=True)
class Endpoint:
    """One route. The handler gets the request, each path parameter by name (read by
    ``PATH_PARAMS``), ``query=`` and ``body=`` when the route has those models, and returns its
    ``answer`` model (or a ready Response when ``answer`` is None). Its docstring's first line is
    the route's summary, the rest its description."""

    method: str
    path: str
    handler: Callable[..., Awaitable[Any]]
    answer: type[BaseModel] | None
    errors: tuple[int, ...] = (503,)  # besides 400 for any input, 401 for auth, 413 for a body
    status: int = 200
    query: type[BaseModel] | None = None
    body: type[Body] | None = None
    auth: bool = False
    refusal: type[BaseModel] = Error  # the answer of a 409
    media: str = "application/json"

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)

    def statuses(self) -> list[int]:
        has_input = self.path_params or self.query or self.body
        body = [413] if self.body else []
        return sorted(
            {*self.errors, *([400] if has_input else []), *([401] if self.auth else []), *body}
        )


def document(endpoints: Sequence[Endpoint], description: str) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for endpoint in endpoints:
        item = paths.setdefault(endpoint.path, {})
        if endpoint.path_params:
            item["parameters"] = [_path_param(name) for name in endpoint.path_params]
        item[endpoint.method.lower()] = _operation(endpoint, schemas)
    _component(Error, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "edge admin API", "version": "1", "description": description},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(endpoint: Endpoint, schemas: dict[str, Any]) -> dict[str, Any]:
    if endpoint.answer:
        answer = _component(endpoint.answer, schemas)
    else:  # a ready Response: this document, or the metrics
        answer = {"type": "object" if endpoint.media == "application/json" else "string"}
    summary, _, description = (inspect.getdoc(endpoint.handler) or "").partition("\n\n")
    operation: dict[str, Any] = {
        "summary": summary,
        **({"description": " ".join(description.split())} if description else {}),
        **({"parameters": _query_params(endpoint.query, schemas)} if endpoint.query else {}),
        **({"security": [{"bearer": []}]} if endpoint.auth else {}),
    }
    if endpoint.body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _component(endpoint.body, schemas)}},
        }
    doc = (endpoint.answer.__doc__ or "").strip() if endpoint.answer else ""
    responses = {str(endpoint.status): _content(answer, doc or summary, endpoint.media)}
    for status in endpoint.statuses():
        model = endpoint.refusal if status == 409 else Error
        responses[str(status)] = _content(_component(model, schemas), REASONS[status])
    operation["responses"] = responses
    return operation


def _content(schema: dict[str, Any], description: str, media: str = "application/json") -> Any:
    return {"description": description, "content": {media: {"schema": schema}}}


def _component(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, str]:
    """Puts the model (and every model it uses) in ``schemas``; returns a $ref to it."""
    _hoist(model.model_json_schema(ref_template=REF), model.__name__, schemas)
    return {"$ref": REF.format(model=model.__name__)}


def _hoist(schema: dict[str, Any], name: str, schemas: dict[str, Any]) -> None:
    for nested, definition in {**schema.pop("$defs", {}), name: schema}.items():
        known = schemas.setdefault(nested, definition)
        assert known == definition, f"two different schemas are named {nested}"


def _query_params(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    for name, definition in schema.pop("$defs", {}).items():
        _hoist(definition, name, schemas)
    return [
        {
            "name": name,
            "in": "query",
            "required": name in schema.get("required", ()),
            "description": field.pop("description", ""),
            "schema": field,
        }
        for name, field in schema["properties"].items()
    ]


def _path_param(name: str) -> dict[str, Any]:
    schema = PATH_PARAMS[name].json_schema(ref_template=REF)
    return {"name": name, "in": "path", "required": True, "schema": schema}
