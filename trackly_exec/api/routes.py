"""The admin API: ``/api/v1/...`` (JSON, bearer tokens from ``http.api_tokens``).

Every route is declared once in :data:`ROUTES` with its request and response models; the same table
registers the aiohttp routes and generates the OpenAPI document (:mod:`trackly_exec.api.openapi`).

Errors are JSON ``{"error", "message", "details", "request_id"}``: 401 without a valid token, 400 for
malformed JSON, 413 for a body above ``http.max_body_bytes`` (the bulk contacts route: 10,000 rows x 1 KiB, see
:func:`import_body_limit`; the message names the limit), 422 for an invalid body (``details`` holds
``{"loc": "body.field.path", "msg"}``, every problem at once, unknown ids named in the body included), 404 for
an unknown id in the path (the message names which), 409 for an
action the resource's state refuses, 503 while the store is unreachable. Anything unexpected is logged
with a request id and answers 500.

Campaign pause and resume: see :data:`trackly_exec.store.models.PAUSE_DESCRIPTION` and ``RESUME_DESCRIPTION`` (the
same words in the CLI help, the OpenAPI document and the README); a paused campaign cannot be triggered.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pymongo.errors import ConnectionFailure, ExecutionTimeout

from trackly_exec.api import models as m
from trackly_exec.app import Trackly
from trackly_exec.errors import TracklyError
from trackly_exec.logs import get_logger
from trackly_exec.store.documents import AnyDocument, Filter, JsonObject, Projection

log = get_logger(__name__)

PREFIX = "/api/v1"
TRACKLY: web.AppKey[Trackly] = web.AppKey("api_trackly", Trackly)
INT64_MAX = 2**63 - 1
MAX_DEPTH = 32

B = TypeVar("B", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(TracklyError):
    """An error answer: ``raise ApiError(404, "not_found", "account 3 not found")``."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str = "",
        details: list[dict[str, str]] | None = None,
        extra: JsonObject | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.details = status, error, message, details or []
        self.extra = extra or {}  # more top-level fields of the answer (declared in ErrorOut)


@dataclass
class Route:
    """One admin API route: what it takes and what it answers (for the router and the OpenAPI document)."""

    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: Any = None  # a model, or a media type string for a streamed file ("text/csv")
    status: int = 200
    auth: bool = True
    errors: tuple[int, ...] = ()
    body_required: bool = True  # False: an empty body is accepted (the model's defaults)


ROUTES: list[Route] = []


def route(method: str, path: str, summary: str, **kw: Any) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        ROUTES.append(Route(method, path, fn, summary, **kw))
        return fn

    return deco


# --------------------------------------------------------------------------------------------- helpers


def _json(data: Any, status: int = 200) -> web.Response:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    return web.json_response(data, status=status, dumps=_dumps)


def _dumps(data: Any) -> str:
    """Strict JSON: a value that is not a finite number (an old record's, a sum overflowing) is written as null, never
    as the ``Infinity`` / ``NaN`` no JSON parser reads."""
    try:
        return json.dumps(data, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(data), default=str, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _loc(prefix: str, parts: tuple[Any, ...]) -> str:
    return ".".join([prefix, *(str(p) for p in parts)])


def validation_error(exc: ValidationError, prefix: str = "body") -> ApiError:
    details = []
    for err in exc.errors()[:50]:
        msg = "unknown field" if err.get("type") == "extra_forbidden" else str(err.get("msg", "invalid"))
        details.append({"loc": _loc(prefix, tuple(err.get("loc", ()))), "msg": msg, "type": str(err.get("type", ""))})
    return ApiError(422, "validation", "request body is invalid" if prefix == "body" else "query is invalid", details)


def field_error(loc: str, msg: str) -> ApiError:
    return ApiError(422, "validation", msg, [{"loc": loc, "msg": msg, "type": "value_error"}])


class Problems:
    """Collects every problem of a request body, then answers one 422 listing them all."""

    def __init__(self) -> None:
        self.details: list[dict[str, str]] = []

    def add(self, loc: str, msg: str) -> None:
        self.details.append({"loc": loc, "msg": msg, "type": "value_error"})

    def __bool__(self) -> bool:
        return bool(self.details)

    def raise_if_any(self) -> None:
        if self.details:
            raise ApiError(422, "validation", "; ".join(d["msg"] for d in self.details[:10]), self.details[:50])


def ids_text(noun: str, ids: list[int], limit: int = 20) -> str:
    """``audience 3`` / ``audiences 3, 4`` / ``contacts 1, 2, ... (and 480 more)``."""
    shown = ", ".join(map(str, ids[:limit])) + (f" (and {len(ids) - limit} more)" if len(ids) > limit else "")
    return f"{noun}{'s' if len(ids) > 1 else ''} {shown}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _number(text: str) -> float | int:
    """A JSON number with a fraction or an exponent: an integer when it has an integral value within 64 bits."""
    value = float(text)
    return int(value) if value.is_integer() and abs(value) <= INT64_MAX else value


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_json(obj: Any, path: tuple[Any, ...] = (), depth: int = 0) -> None:
    """Refuse what the store cannot keep: deep nesting, integers beyond 64 bits, non-finite numbers, NUL in keys,
    lone surrogates."""
    if depth > MAX_DEPTH:
        raise field_error(_loc("body", path), f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(obj, bool):
        return
    if isinstance(obj, str):
        if not _utf8(obj):
            raise field_error(_loc("body", path), "text is not valid Unicode (lone surrogate)")
        return
    if isinstance(obj, int) and not -INT64_MAX - 1 <= obj <= INT64_MAX:
        raise field_error(_loc("body", path), "integer out of the 64-bit range")
    if isinstance(obj, float) and not math.isfinite(obj):  # 1e999999 parses to inf: refuse it like NaN/Infinity
        raise field_error(_loc("body", path), "number is not finite (out of range, infinity or NaN)")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if "\x00" in k or not _utf8(k):
                raise field_error(
                    _loc("body", (*path, k.encode("utf-8", "replace").decode())),
                    "field names may not contain NUL or lone surrogates",
                )
            _check_json(v, (*path, k), depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_json(v, (*path, i), depth + 1)


#: The bulk contacts route takes up to MAX_BULK_CONTACTS rows of up to this many bytes each, whatever
#: ``http.max_body_bytes`` says (10,000 ordinary rows are ~1.3 MB: the two limits must agree).
IMPORT_ROW_BYTES = 1024


def import_body_limit(settings: Any) -> int:
    """The body limit of the bulk contacts route (``POST /sending-lists/{id}/contacts``)."""
    return max(int(settings.http.max_body_bytes), m.MAX_BULK_CONTACTS * IMPORT_ROW_BYTES)


def app_body_limit(settings: Any) -> int:
    """What the aiohttp application must let through (the largest route limit); each route checks its own."""
    return import_body_limit(settings)


def too_large(limit: int, what: str) -> ApiError:
    return ApiError(
        413,
        "too_large",
        f"body larger than {limit} bytes ({what})",
        [{"loc": "body", "msg": f"at most {limit} bytes", "type": "too_large"}],
    )


def _check_rows(data: Any, field: str) -> None:
    """Each item of ``data[field]`` checked on its own (:func:`_check_json`): one the store could not keep (a lone
    surrogate, NUL in a key, a number out of range...) becomes ``{INVALID_ROW: reason}``, reported by its index
    with the others kept, instead of making the whole body a 422."""
    rows = data.get(field) if isinstance(data, dict) else None
    if not isinstance(rows, list):
        return
    for i, row in enumerate(rows):
        try:
            _check_json(row, (field, i), 1)
        except ApiError as exc:
            loc = exc.details[0]["loc"] if exc.details else ""
            rows[i] = {m.INVALID_ROW: f"{loc.removeprefix(f'body.{field}.{i}.')}: {exc.message}".lstrip(": ")}


#: Body types read as JSON: JSON itself, and what a JSON body is sent as by tools that do not say (none, curl's
#: default form type, plain text, raw bytes). Anything else (XML, multipart, an image...) is a 415.
_JSON_TYPES = ("", "application/json", "text/plain", "application/x-www-form-urlencoded", "application/octet-stream")


def _check_content_type(request: web.Request) -> None:
    kind = request.content_type.lower() if request.headers.get("Content-Type") else ""
    charset = (request.charset or "utf-8").lower().replace("_", "-")
    if (kind not in _JSON_TYPES and not kind.endswith("+json")) or charset not in ("utf-8", "utf8", "us-ascii"):
        shown = request.headers.get("Content-Type", "")[:100]
        raise ApiError(
            415,
            "unsupported_media_type",
            f"the body must be JSON in UTF-8 (Content-Type: application/json), not {shown!r}",
            [{"loc": "header.Content-Type", "msg": "application/json expected", "type": "media_type"}],
        )


async def read_body(
    request: web.Request,
    model: type[B],
    *,
    limit: int | None = None,
    limit_name: str = "http.max_body_bytes",
    rows: str | None = None,
) -> B:
    """The request's JSON body validated by ``model`` (400 malformed, 413 above ``limit``, 422 invalid).
    ``rows``: a list field whose items are checked one by one (:func:`_check_rows`)."""
    limit = limit or _tr(request).settings.http.max_body_bytes
    _check_content_type(request)
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit, limit_name)
    raw = await request.read()
    if len(raw) > limit:
        raise too_large(limit, limit_name)
    try:
        data = json.loads(raw.decode("utf-8") if raw else "", parse_constant=_reject_constant, parse_float=_number)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {str(exc)[:200]}") from exc
    if rows is not None:
        _check_rows(data, rows)
    _check_json(data)
    try:
        # strict JSON types: a boolean is true or false (not 0, "yes" or "off"), a number is not a boolean or a
        # string; dates and enumerations are their JSON strings as before; 3.0 is the integer 3 (as JSON Schema
        # reads it: a client may write any integer so)
        return model.model_validate_json(json.dumps(data), strict=True)
    except ValidationError as exc:
        raise validation_error(exc) from exc


def read_query(request: web.Request, model: type[B]) -> B:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise validation_error(exc, "query") from exc


def path_id(request: web.Request, what: str, name: str = "id") -> int:
    raw = request.match_info[name]
    # ASCII digits only: str.isdigit() also says yes to "¹" (which int() refuses: a 500) and to a fullwidth one
    # (an alias of 1)
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) <= INT64_MAX:
        raise ApiError(404, "not_found", f"{what} {raw!r} not found")
    return int(raw)


def _tr(request: web.Request) -> Trackly:
    return request.app[TRACKLY]


async def get_or_404(trackly: Trackly, coll: str, doc_id: int, what: str) -> Any:
    doc: AnyDocument | None = await trackly.db[coll].find_one({"_id": doc_id})
    if doc is None:
        raise ApiError(404, "not_found", f"{what} {doc_id} not found")
    return doc


async def path_doc(request: web.Request, coll: str, what: str) -> Any:
    """The document of ``coll`` whose id is in the path (``what`` names it in the 404 of a bad or unknown id)."""
    return await get_or_404(_tr(request), coll, path_id(request, what), what)


async def keyset_page(
    store: Any, coll: str, match: Filter, after: Any, limit: int, projection: Projection | None = None
) -> tuple[list[Any], Any]:
    """One page of ``coll`` in ``_id`` order, after ``after`` (None: from the start): at most ``limit`` documents
    (of ``coll``'s document type: the caller names it) and the ``after`` of the next page (None on the last one)."""
    if after is not None:
        match = {**match, "_id": {"$gt": after}}
    docs: list[AnyDocument] = await store.db[coll].find(match, projection).sort("_id", 1).limit(limit + 1).to_list(None)
    more = len(docs) > limit
    docs = docs[:limit]
    return docs, docs[-1]["_id"] if more else None


async def count_by(store: Any, coll: str, match: Filter, field: str, *, none: str = "None") -> dict[str, int]:
    """How many documents of ``coll`` match, by the value of ``field`` (as text; ``none`` for a missing one):
    one single-key ``$group`` (nx-27017 groups on one field only; its ``_id`` values may come back as text)."""
    out: dict[str, int] = {}
    async for row in await store.db[coll].aggregate(
        [{"$match": match}, {"$group": {"_id": f"${field}", "n": {"$sum": 1}}}]
    ):
        key = none if row["_id"] is None else str(row["_id"])
        out[key] = out.get(key, 0) + int(row["n"])
    return out


async def page(request: web.Request, coll: str, out: Any, query: m.PageQuery, match: Filter) -> web.Response:
    docs, next_after = await keyset_page(_tr(request).store, coll, match, query.after, query.limit)
    items = [out.from_doc(d).model_dump(mode="json") for d in docs]
    return _json({"items": items, "next_after": next_after})


def name_match(query: m.PageQuery) -> Filter:
    """The store filter of a :class:`NamedQuery`: archived or not, and a name containing the text (any case).

    ``archived`` is matched as ``$eq: True`` or ``$in: [False, None]`` (records made before archiving existed
    have no such field)."""
    match: Filter = {}
    if isinstance(query, m.NamedQuery):
        match["archived"] = True if query.archived else {"$in": [False, None]}
        if query.name:
            match["name"] = {"$regex": re.escape(query.name), "$options": "i"}
    return match


def read_routes(
    path: str,
    coll: str,
    out: Any,
    noun: str,
    article: str = "a",
    *,
    query: type[m.PageQuery] = m.PageQuery,
    match: Callable[[Any], Filter] = name_match,
) -> None:
    """``GET {path}`` (paginated list, filtered by ``query``) and ``GET {path}/{id}`` for a resource read as stored."""

    async def list_all(request: web.Request) -> web.Response:
        q = read_query(request, query)
        return await page(request, coll, out, q, match(q))

    async def get_one(request: web.Request) -> web.Response:
        return _json(out.from_doc(await path_doc(request, coll, noun)))

    route("GET", path, f"List {noun}s", query=query, response=m.Page[out])(list_all)
    route("GET", f"{path}/{{id}}", f"Get {article} {noun}", response=out)(get_one)


async def _new_id(trackly: Trackly, coll: str) -> int:
    return (await trackly.store.next_ids(coll, 1))[0]


# --------------------------------------------------------------------------------------------- middleware


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error with a request id; never leak a traceback."""
    rid = uuid.uuid4().hex[:16]
    started = time.monotonic()
    try:
        resp = await handler(request)
    except ApiError as exc:
        resp = _json(
            {"error": exc.error, "message": exc.message, "details": exc.details, **exc.extra, "request_id": rid},
            exc.status,
        )
    except web.HTTPRequestEntityTooLarge:
        limit = request.client_max_size
        resp = _json(
            {
                "error": "too_large",
                "message": f"body larger than {limit} bytes (the server's largest accepted body)",
                "details": [],
                "request_id": rid,
            },
            413,
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = _json(
            {"error": exc.reason.lower().replace(" ", "_"), "message": exc.reason, "details": [], "request_id": rid},
            exc.status,
        )
        if isinstance(exc, web.HTTPMethodNotAllowed):  # RFC 9110: a 405 names the methods the resource allows
            resp.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except (ConnectionFailure, ExecutionTimeout) as exc:
        log.error("api_store_unavailable", request_id=rid, path=request.path, error=str(exc))
        resp = _json(
            {
                "error": "unavailable",
                "message": "the store is not reachable right now; try again",
                "details": [],
                "request_id": rid,
            },
            503,
        )
    except Exception as exc:
        log.exception("api_internal_error", request_id=rid, method=request.method, path=request.path, error=str(exc))
        resp = _json(
            {
                "error": "internal",
                "message": f"internal error; quote request id {rid}",
                "details": [],
                "request_id": rid,
            },
            500,
        )
    resp.headers["X-Request-Id"] = rid
    log.info(
        "api_request",
        method=request.method,
        path=request.path,
        status=resp.status,
        request_id=rid,
        ms=round((time.monotonic() - started) * 1000, 1),
    )
    return resp


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``Authorization: Bearer <token>`` against ``http.api_tokens`` (constant-time, every token compared)."""
    info = request.match_info.route.resource
    canonical = info.canonical if info is not None else ""
    if canonical.endswith("/openapi.json"):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    supplied = header[7:].strip().encode() if header[:7].lower() == "bearer " else b""
    ok = False
    for token in _tr(request).settings.http.api_tokens:
        ok |= hmac.compare_digest(supplied, token.get_secret_value().encode())
    if not supplied or not ok:
        raise ApiError(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer <http.api_tokens>)")
    return await handler(request)
