"""The ASGI application: routes, errors as ``{"detail": ...}``, body limits, CORS, the UI's
static files, ``/api/health``, ``/metrics`` and ``/openapi.json``.

    app = create_app(ApiContext.for_server(server))

No page loads anything from the internet: Swagger UI and ReDoc (served from a CDN by FastAPI)
are off; the OpenAPI document is at ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pydantic
import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.api import automations, deployments, events, pools, runs
from engine.api.auth import Ctx, require_read
from engine.api.context import ApiContext
from engine.api.errors import ApiError
from engine.api.metrics import CONTENT_TYPE
from engine.api.models import Health, Problem
from engine.api.queries import snapshot
from engine.errors import (
    FlowrelayError,
    InvalidTransition,
    ObjectNotFound,
    ParameterValidationError,
    ResultNotSerializable,
    ResultTooLarge,
)

log = structlog.get_logger("flowrelay.api")

STATIC = Path(__file__).parent / "static"
PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>flowrelay</title></head>
<body><h1>flowrelay</h1>
<p>The web UI is not installed in this copy (no <code>engine/api/static/index.html</code>).
The HTTP API is at <a href="/api/health">/api/health</a>; its description at
<a href="/openapi.json">/openapi.json</a>; metrics at <a href="/metrics">/metrics</a>.</p>
</body></html>
"""


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="flowrelay",
        version=ctx.version,
        summary="Flow runs, deployments, automations and events of a flowrelay server.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        responses={
            400: {"model": Problem, "description": "Malformed request"},
            401: {"model": Problem, "description": "Missing or unknown token"},
            403: {"model": Problem, "description": "A read token on a write endpoint"},
            404: {"model": Problem, "description": "Unknown run, deployment or automation"},
            422: {"model": Problem, "description": "Invalid values"},
        },
    )
    app.state.ctx = ctx
    _add_error_handlers(app)
    app.include_router(runs.router)
    app.include_router(deployments.router)
    app.include_router(pools.router)
    app.include_router(automations.router)
    app.include_router(events.router)
    _add_service_routes(app)
    _add_static_routes(app)
    if ctx.settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=ctx.settings.cors_origins,
            allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
        )
    events_limit = ctx.settings.max_event_bytes * ctx.settings.max_batch + 4096
    other_limit = ctx.service.parameters_max_bytes + 65_536
    app.add_middleware(BodyLimit, limit=other_limit, limits={"/api/events": events_limit})
    return app


# --- errors -----------------------------------------------------------------------------------


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _describe_validation(errors: list[Any]) -> tuple[int, str]:
    """RequestValidationError → (status, one line per problem: where, what, the value)."""
    lines = []
    status = 422
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        where = loc[0] + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc[1:]) if loc else "request"
        if error.get("type") == "json_invalid":
            status = 400
            ctx = error.get("ctx") or {}
            lines.append(f"body is not valid JSON: {ctx.get('error', error.get('msg'))}")
            continue
        message = str(error.get("msg", "invalid"))
        value = error.get("input")
        if error.get("type") == "missing":
            lines.append(f"{where}: required")
        elif isinstance(value, str | int | float | bool) and len(repr(value)) < 120:
            lines.append(f"{where}: {message} (got {value!r})")
        else:
            lines.append(f"{where}: {message}")
    return status, "; ".join(lines) or "invalid request"


def _one_branch(errors: list[Any], body: Any) -> list[Any]:
    """A body that may be one object or a list of them (POST /api/events) fails both ways;
    keep the errors of the way the body was sent, without pydantic's union tags in the path."""
    tagged = [e for e in errors if len(e.get("loc", ())) > 1 and e["loc"][0] == "body"
              and _is_tag(str(e["loc"][1]))]
    if not tagged:
        return errors
    if isinstance(body, dict):
        wanted = [e for e in tagged if not str(e["loc"][1]).startswith("list[")]
    elif isinstance(body, list):
        wanted = [e for e in tagged if str(e["loc"][1]).startswith("list[")]
    else:
        return [{"loc": ("body",), "msg": "must be an event object or a list of event objects",
                 "type": "value_error", "input": body}]
    others = [e for e in errors if e not in tagged]
    return others + [{**e, "loc": ("body", *e["loc"][2:])} for e in wanted]


def _is_tag(part: str) -> bool:
    return part.startswith("list[") or (part[:1].isupper() and part.isidentifier())


def _answer_with(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def answer(request: Request, exc: Exception) -> Response:
        return _problem(status, str(exc))

    return answer


def _add_error_handlers(app: FastAPI) -> None:
    Handler = Callable[[Request, Any], Awaitable[Response]]

    def on(kind: type[Exception]) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            app.add_exception_handler(kind, handler)
            return handler

        return register

    @on(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return _problem(exc.status, exc.detail)

    @on(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        status, detail = _describe_validation(_one_branch(list(exc.errors()), exc.body))
        return _problem(status, detail)

    @on(pydantic.ValidationError)
    async def invalid_model(request: Request, exc: pydantic.ValidationError) -> Response:
        # Raised while building engine objects from valid-looking input (a state, an event).
        status, detail = _describe_validation(list(exc.errors(include_url=False)))
        return _problem(422, detail)

    # Engine errors met while answering: their message, with the status their kind calls for
    # (the most specific class wins: Starlette looks handlers up along the exception's MRO).
    for kind, status in (
        (ObjectNotFound, 404),
        (InvalidTransition, 409),
        (ParameterValidationError, 422),
        (ResultTooLarge, 413),
        (ResultNotSerializable, 422),
        (FlowrelayError, 422),
    ):
        on(kind)(_answer_with(status))

    @on(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path} (see /openapi.json)"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse({"detail": detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @on(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        log.error("API request failed", method=request.method, path=request.url.path,
                  exc_info=exc)
        return _problem(500, f"internal error while answering {request.method} "
                             f"{request.url.path}: see the server log")


# --- body limits ------------------------------------------------------------------------------


class BodyLimit:
    """Refuse request bodies over `limit` bytes (per path in `limits`) with 413, before the
    application reads them: a declared Content-Length is checked at once; a chunked body is
    read up to the limit, then handed on."""

    def __init__(self, app: ASGIApp, *, limit: int, limits: dict[str, int]) -> None:
        self.app = app
        self.limit = limit
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.limit)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, scope["path"], limit)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await self._refuse(send, scope["path"], limit)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay([{"type": "http.request", "body": bytes(body)}], receive), send)

    async def _refuse(self, send: Send, path: str, limit: int) -> None:
        response = _problem(
            413, f"request body over {limit:,} bytes, the limit for {path} (api.max_event_bytes "
                 "x api.max_batch for /api/events, parameters.max_bytes elsewhere)",
        )
        await response({"type": "http"}, _nothing, send)


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    queue = list(messages)

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


# --- health, metrics, static files ------------------------------------------------------------


def _add_service_routes(app: FastAPI) -> None:
    @app.get("/api/health", tags=["service"], summary="Liveness (no token needed)")
    async def health(ctx: Ctx) -> Health:
        return Health(status="ok", version=ctx.version)

    @app.get(
        "/metrics", tags=["service"], dependencies=[Depends(require_read)],
        summary="Prometheus metrics", response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def metrics(ctx: Ctx) -> Response:
        snap = await snapshot(ctx.service)
        rules = await automations.automation_rows(ctx) if ctx.automations is not None else None
        snap.dead_letter_queue = await _dead_letters(ctx)
        body = ctx.metrics.render(snap, rules, ctx.automations, ctx.hub.clients, ctx.hub.dropped)
        return Response(body, media_type=CONTENT_TYPE)


async def _dead_letters(ctx: ApiContext) -> int | None:
    """Messages waiting in the dead-letter queue; None (the metric left out) if the broker
    cannot tell within a second or two."""
    if ctx.dead_letters is None:
        return None
    try:
        async with asyncio.timeout(2.0):
            return await ctx.dead_letters()
    except Exception as exc:  # noqa: BLE001 - a scrape never fails for the broker's sake
        log.warning("could not count the dead-letter queue", error=f"{type(exc).__name__}: {exc}")
        return None


def _docs_page(spec: dict[str, Any]) -> str:
    """The endpoints as a plain HTML table (FastAPI's Swagger UI would load from a CDN)."""
    rows = []
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            rows.append(
                f"<tr><td>{method.upper()}</td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(operation.get('summary', ''))}</td></tr>"
            )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>flowrelay API</title>'
        "<style>body{font-family:sans-serif;margin:2em}td{padding:.2em 1em .2em 0}</style></head>"
        f"<body><h1>flowrelay HTTP API {html.escape(str(spec.get('info', {}).get('version', '')))}</h1>"
        '<p>The full description: <a href="/openapi.json">/openapi.json</a>. Send '
        "<code>Authorization: Bearer &lt;token&gt;</code> when tokens are configured.</p>"
        f"<table>{''.join(rows)}</table></body></html>"
    )


def _add_static_routes(app: FastAPI) -> None:
    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return HTMLResponse(_docs_page(app.openapi()))

    def index() -> Response:
        page = STATIC / "index.html"
        if page.is_file():
            return FileResponse(page, headers={"Cache-Control": "no-cache"})
        return HTMLResponse(PLACEHOLDER)

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return index()

    @app.get("/ui", include_in_schema=False)
    async def ui_root() -> Response:
        return index()

    @app.get("/ui/{path:path}", include_in_schema=False)
    async def ui(path: str) -> Response:
        root = STATIC.resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root):
            raise StarletteHTTPException(404, f"no such file: /ui/{path}")
        if target.is_file():
            return FileResponse(target, headers={"Cache-Control": "no-cache"})
        if "." in Path(path).name:  # a missing asset, not a page of the UI's own routing
            raise StarletteHTTPException(404, f"no such file: /ui/{path}")
        return index()


__all__ = ["BodyLimit", "create_app"]
