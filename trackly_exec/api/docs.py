"""``GET /docs``: the admin API reference, rendered on the server from the OpenAPI document (one HTML page, no
script, no external stylesheet or CDN: it works offline and behind a strict Content-Security-Policy)."""

from __future__ import annotations

import html
import json
from typing import Any

from aiohttp import web

from trackly_exec.api.openapi import document
from trackly_exec.store.documents import JsonObject

CSS = """
body{font:14px/1.5 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:14px 24px}header a{color:#9ecbff}
main{display:grid;grid-template-columns:260px 1fr;gap:24px;padding:16px 24px}
nav{position:sticky;top:8px;align-self:start;max-height:95vh;overflow:auto;font-size:13px}
nav a{display:block;color:#1d2330;text-decoration:none;padding:1px 0}nav h4{margin:12px 0 4px}
section.op{background:#fff;border-radius:8px;padding:12px 16px;margin-bottom:14px;box-shadow:0 1px 2px #0001}
.m{display:inline-block;min-width:52px;font-weight:700;font-family:monospace}
.GET{color:#1565c0}.POST{color:#2e7d32}.PATCH,.PUT{color:#b45309}.DELETE{color:#c62828}
code,pre{font-family:ui-monospace,monospace;font-size:12.5px}pre{background:#f1f3f6;padding:8px;overflow:auto}
table{border-collapse:collapse;width:100%;margin:6px 0}td,th{border-bottom:1px solid #eceef2;padding:4px 6px;
text-align:left;vertical-align:top}th{font-weight:600;color:#6b7280}.req{color:#c62828}.muted{color:#6b7280}
"""


REQUIRED = ' <span class="req">required</span>'


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type(schema: JsonObject) -> str:
    """A short readable type of a JSON schema."""
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
    if "anyOf" in schema:
        return " | ".join(_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(f"<code>{_e(json.dumps(v))}</code>" for v in schema["enum"])
    if "const" in schema:
        return f"<code>{_e(json.dumps(schema['const']))}</code>"
    t = schema.get("type", "any")
    if t == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if t == "object" and "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
        return f"object of {_type(schema['additionalProperties'])}"
    fmt = f" ({schema['format']})" if "format" in schema else ""
    return _e(f"{t}{fmt}")


def _limits(schema: JsonObject) -> str:
    parts = []
    for key, label in (
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("exclusiveMinimum", ">"),
        ("exclusiveMaximum", "<"),
        ("minLength", "min length "),
        ("maxLength", "max length "),
        ("maxItems", "max items "),
        ("pattern", "pattern "),
    ):
        if key in schema:
            parts.append(f"{label}{schema[key]}")
    if "default" in schema and schema["default"] is not None:
        parts.append(f"default {json.dumps(schema['default'])}")
    return _e(", ".join(parts))


def _properties(schema: JsonObject) -> str:
    props = schema.get("properties") or {}
    if not props:
        return f"<p>{_type(schema)}</p>"
    required = set(schema.get("required") or [])
    rows = []
    for name, prop in props.items():
        req = ' <span class="req">required</span>' if name in required else ""
        rows.append(
            f"<tr><td><code>{_e(name)}</code>{req}</td><td>{_type(prop)}</td>"
            f"<td>{_e(prop.get('description', ''))} <span class='muted'>{_limits(prop)}</span></td></tr>"
        )
    return "<table><tr><th>field</th><th>type</th><th>description</th></tr>" + "".join(rows) + "</table>"


def render(doc: JsonObject) -> str:
    """The reference page of an OpenAPI document."""
    schemas: JsonObject = doc.get("components", {}).get("schemas", {})
    by_tag: dict[str, list[tuple[str, str, JsonObject]]] = {}
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            by_tag.setdefault((op.get("tags") or ["other"])[0], []).append((method.upper(), path, op))
    nav, body = [], []
    for tag, ops in by_tag.items():
        nav.append(f"<h4>{_e(tag)}</h4>")
        for method, path, op in ops:
            anchor = op.get("operationId", f"{method}-{path}")
            nav.append(f'<a href="#{_e(anchor)}"><span class="m {method}">{method}</span>{_e(path[7:])}</a>')
            head = (
                f'<section class="op" id="{_e(anchor)}"><h3><span class="m {method}">{method}</span> '
                f"<code>{_e(path)}</code></h3><p>{_e(op.get('summary', ''))}</p>"
            )
            parts = [head]
            if op.get("security") == []:
                parts.append('<p class="muted">No token needed.</p>')
            params = op.get("parameters") or []
            if params:
                rows = "".join(
                    f"<tr><td><code>{_e(p['name'])}</code>{REQUIRED if p.get('required') else ''}</td>"
                    f"<td>{_e(p['in'])}</td><td>{_type(p.get('schema', {}))}</td>"
                    f"<td>{_e(p.get('description', ''))} "
                    f"<span class='muted'>{_limits(p.get('schema', {}))}</span></td></tr>"
                    for p in params
                )
                parts.append(
                    "<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th><th>description</th>"
                    f"</tr>{rows}</table>"
                )
            rb = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if rb:
                name = _ref_name(rb.get("$ref", ""))
                target = schemas.get(name, rb)
                parts.append(f"<h4>Request body: {_type(rb)}</h4>{_properties(target)}")
                examples = target.get("examples")
                if examples:
                    parts.append(f"<pre>{_e(json.dumps(examples[0], indent=2))}</pre>")
            resp_rows: list[str] = []
            for code, resp in op.get("responses", {}).items():
                content = resp.get("content", {})
                media, body_schema = next(iter(content.items()), ("", {}))
                body_schema = body_schema if isinstance(body_schema, dict) else {}
                shown = _type(body_schema.get("schema", {})) if body_schema else ""
                resp_rows.append(
                    f"<tr><td>{_e(code)}</td><td>{_e(resp.get('description', ''))}</td>"
                    f"<td>{_e(media)}</td><td>{shown}</td></tr>"
                )
            parts.append(
                "<h4>Responses</h4><table><tr><th>status</th><th>meaning</th><th>media type</th><th>body</th>"
                f"</tr>{''.join(resp_rows)}</table></section>"
            )
            body.append("".join(parts))
    nav.append("<h4>schemas</h4>")
    body.append("<h2>Schemas</h2>")
    for name, schema in schemas.items():
        nav.append(f'<a href="#schema-{_e(name)}">{_e(name)}</a>')
        desc = f"<p>{_e(schema['description'])}</p>" if schema.get("description") else ""
        body.append(
            f'<section class="op" id="schema-{_e(name)}"><h3>{_e(name)}</h3>{desc}{_properties(schema)}</section>'
        )
    info = doc.get("info", {})
    intro = "".join(f"<p>{_e(p)}</p>" for p in str(info.get("description", "")).split("\n\n"))
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(info.get('title', 'API'))} "
        f"reference</title><meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<style>{CSS}</style></head><body><header><strong>{_e(info.get('title', ''))}</strong> "
        f"{_e(info.get('version', ''))} · <a href='/api/v1/openapi.json'>openapi.json</a></header><main><nav>"
        f"{''.join(nav)}</nav><div>{intro}{''.join(body)}</div></main></body></html>"
    )


def setup(app: web.Application, trackly: Any) -> None:
    cache: list[bytes] = []  # rendered on first request (building the OpenAPI document costs start-up time)

    async def docs(request: web.Request) -> web.Response:
        if not cache:
            cache.append(render(document(trackly.settings.http.public_url)).encode("utf-8"))
        return web.Response(
            body=cache[0],
            content_type="text/html",
            charset="utf-8",
            headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"},
        )

    app.router.add_get("/docs", docs)
