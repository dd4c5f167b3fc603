"""The OpenAPI 3.1 document of a service, built from its route table.

Each service declares its routes once (:class:`llmsvc.core.app.Route`); the
same table registers the aiohttp handlers and describes them here, so the
document cannot drift from what is served.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from llmsvc.core.wire import ErrorResponse

if TYPE_CHECKING:
    from llmsvc.core.app import Route

_REF = "#/components/schemas/{model}"


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF)
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components.setdefault(model.__name__, schema)
    return {"$ref": _REF.format(model=model.__name__)}


def _untyped(media: str) -> dict[str, Any]:
    """The schema of a response without a model: a JSON object, events of any data, text."""
    kind = media.split(";")[0].strip()
    if kind == "application/json":
        return {"type": "object"}
    if kind == "text/event-stream":
        return {}  # each event's data: a JSON chunk, an error object, or [DONE]
    return {"type": "string"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(route: Route, components: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": route.summary, "operationId": route.operation_id()}
    if route.description:
        op["description"] = route.description
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in route.path_params()
    ]
    params += [
        {
            "name": q.name,
            "in": q.location,
            "required": False,
            "schema": q.schema,
            "description": q.description,
        }
        for q in route.query
    ]
    if params:
        op["parameters"] = params
    if route.request is not None:
        op["requestBody"] = {
            "required": route.request_required,
            "content": {route.request_media: {"schema": _schema(route.request, components)}},
        }
    ok: dict[str, Any] = {"description": "OK"}
    if route.response is not None:
        ok["content"] = _json_content(_schema(route.response, components))
    elif route.response_media:
        media = route.response_media
        ok["content"] = {
            m: {"schema": _untyped(m)} for m in ([media] if isinstance(media, str) else media)
        }
    responses: dict[str, Any] = {str(route.status): ok}
    for status, text in route.also.items():
        responses[str(status)] = {**ok, "description": text}
    error = {"content": _json_content(_schema(ErrorResponse, components))}
    for status, text in route.errors.items():
        responses[str(status)] = {"description": text, **error}
    op["responses"] = responses
    return op


def build_openapi(title: str, version: str, routes: list[Route]) -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for route in routes:
        item = paths.setdefault(route.openapi_path(), {})
        item[route.method.lower()] = _operation(route, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": components},
    }
