"""The admin API's OpenAPI 3.1 document, generated from :data:`trackly_exec.api.ROUTES` and the pydantic
models in :mod:`trackly_exec.api.models`: the routes the server registers and the schemas it validates with
are the ones documented, so the document cannot drift."""

from __future__ import annotations

import functools
import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from trackly_exec import __version__
from trackly_exec.api.models import ErrorOut
from trackly_exec.store.documents import JsonObject
from trackly_exec.store.models import CANCEL_DESCRIPTION, PAUSE_DESCRIPTION, RESUME_DESCRIPTION

REF = "#/components/schemas/{model}"
_ERRORS = {
    400: "Malformed JSON",
    401: "Missing or wrong bearer token",
    404: "Unknown id (the message names which)",
    409: "The resource's state refuses the action",
    413: "Body larger than http.max_body_bytes (bulk contacts: 10,000 rows x 1 KiB); the message names the limit",
    422: "Invalid body or query; `details` lists each field path",
    500: "Internal error (logged with the request id)",
    503: "The store is unreachable right now",
}
DESCRIPTION = """Admin API of trackly-exec. Every route except this document needs `Authorization: Bearer <token>`
(one of `http.api_tokens`). Ids are integers. Lists are paginated: `limit` (1-1000) and `after` (the previous
page's `next_after`). Lists of sending lists, audiences, creatives and campaigns filter by `name` (contains, any
case) and `archived` (archived items are hidden unless `archived=true`); campaigns also by `status`.
Secrets (`webhook_secret`, secret-looking `driver_settings`) are masked in answers. An unknown id in the path is a
404; every problem of a body (unknown or archived ids it names included) is reported in one 422."""
DESCRIPTION += f"\n\nCampaigns. {PAUSE_DESCRIPTION}. {RESUME_DESCRIPTION}. {CANCEL_DESCRIPTION}."


def _routes() -> list[Any]:
    from trackly_exec.api import routes as api

    return api.ROUTES


def _op_id(method: str, path: str) -> str:
    words = re.sub(r"[{}]", "", path).replace("-", "_").replace(".", "_").strip("/").split("/")
    return "_".join([method.lower(), *(w for w in words if w)])


@functools.cache
def _build() -> JsonObject:
    routes = _routes()
    models: list[tuple[type[BaseModel], Any]] = [(ErrorOut, "serialization")]
    for r in routes:
        if r.body is not None:
            models.append((r.body, "validation"))
        if isinstance(r.response, type) and issubclass(r.response, BaseModel):
            models.append((r.response, "serialization"))
    keys, top = models_json_schema(list(dict.fromkeys(models)), ref_template=REF)
    schemas = top.get("$defs", {})

    def ref(model: type[BaseModel], mode: JsonSchemaMode) -> JsonObject:
        return dict(keys[(model, mode)])

    error = {"content": {"application/json": {"schema": ref(ErrorOut, "serialization")}}}
    paths: dict[str, JsonObject] = {}
    for r in routes:
        full = f"/api/v1{r.path}"
        op: JsonObject = {
            "operationId": _op_id(r.method, r.path),
            "summary": r.summary,
            "tags": [r.path.strip("/").split("/")[0]],
        }
        params: list[JsonObject] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
            for name in re.findall(r"{(\w+)}", r.path)
        ]
        if r.query is not None:
            qs = r.query.model_json_schema()
            for name, prop in qs.get("properties", {}).items():
                params.append(
                    {
                        "name": name,
                        "in": "query",
                        "required": name in qs.get("required", []),
                        "description": prop.get("description", ""),
                        "schema": {k: v for k, v in prop.items() if k not in ("description", "title")},
                    }
                )
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {
                "required": r.body_required,
                "content": {"application/json": {"schema": ref(r.body, "validation")}},
            }
        media = "application/json"
        if isinstance(r.response, type) and issubclass(r.response, BaseModel):
            schema = ref(r.response, "serialization")
        elif isinstance(r.response, str):  # a media type: a streamed file (CSV)
            media, schema = r.response, {"type": "string"}
        else:
            schema = {"type": "object"}
        responses: JsonObject = {str(r.status): {"description": "OK", "content": {media: {"schema": schema}}}}
        codes = set(r.errors) | {500} | ({503} if r.auth else set())
        if r.body is not None:
            codes |= {400, 413, 422}
        if r.query is not None:
            codes.add(422)
        if "{" in r.path or r.body is not None:
            codes.add(404)
        if r.auth:
            codes.add(401)
        else:
            op["security"] = []
        for code in sorted(codes):
            responses[str(code)] = {"description": _ERRORS[code], **error}
        op["responses"] = responses
        paths.setdefault(full, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "trackly-exec admin API", "version": str(__version__), "description": DESCRIPTION},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearerAuth": []}],
    }


def document(public_url: str = "") -> JsonObject:
    """The OpenAPI document (``servers`` set to ``public_url`` when given)."""
    doc = dict(_build())
    if public_url:
        doc["servers"] = [{"url": public_url}]
    return doc
