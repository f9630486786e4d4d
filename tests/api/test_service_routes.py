"""Health, the OpenAPI document and the docs page (nothing from a CDN), the UI's static files,
CORS, and errors for unknown endpoints."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from engine.api import ApiContext, create_app
from engine.api import app as app_module
from engine.server.app import Server
from engine.settings import load_settings
from tests.api.conftest import Api


async def test_openapi_and_docs_need_no_internet(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    paths = set(spec["paths"])
    assert {"/api/health", "/api/flow-runs", "/api/flow-runs/{flow_run_id}", "/api/flow-runs/{flow_run_id}/cancel",
            "/api/deployments/{flow}/{name}/runs", "/api/automations/{name}", "/api/events", "/api/graph",
            "/api/stream", "/metrics"} <= paths
    assert "bearer" in str(spec["components"]["securitySchemes"]).lower()
    docs = await api.client.get("/docs")
    assert docs.status_code == 200 and "/api/flow-runs" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text  # no CDN
    assert (await api.client.get("/redoc")).status_code == 404


async def test_the_ui_is_served_from_the_package(api: Api) -> None:
    index = await api.client.get("/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    shipped = sorted(p.name for p in app_module.STATIC.iterdir()) if app_module.STATIC.is_dir() else []
    if "index.html" in shipped:
        assert index.text == (app_module.STATIC / "index.html").read_text()
        assert (await api.client.get("/ui/")).text == index.text
        assert (await api.client.get("/ui/runs/123")).text == index.text  # the UI's own routes
    for name in shipped:
        if (app_module.STATIC / name).is_file():
            assert (await api.client.get(f"/ui/{name}")).content == (app_module.STATIC / name).read_bytes()
    assert (await api.client.get("/ui/missing.js")).status_code == 404
    escape = await api.client.get("/ui/..%2f..%2fsettings.py")
    assert escape.status_code == 404 and "import" not in escape.text


async def test_a_placeholder_when_the_ui_is_missing(api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "STATIC", tmp_path / "no-static")
    page = await api.client.get("/")
    assert page.status_code == 200 and "web UI is not installed" in page.text and "/api/health" in page.text


async def test_unknown_endpoints_and_methods(api: Api) -> None:
    missing = await api.client.get("/api/nothing")
    assert missing.status_code == 404 and "GET /api/nothing" in missing.json()["detail"]
    wrong = await api.client.delete("/api/flow-runs")
    assert wrong.status_code == 405 and "DELETE" in wrong.json()["detail"]


async def test_cors_is_off_unless_configured(api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    origin = {"Origin": "https://dash.example.com"}
    plain = await api.client.get("/api/health", headers=origin)
    assert "access-control-allow-origin" not in plain.headers

    monkeypatch.setenv("FLOWRELAY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path / 'cors.db'}")
    monkeypatch.setenv("FLOWRELAY_BROKER__URL", "memory://cors")
    monkeypatch.setenv("FLOWRELAY_API__CORS_ORIGINS", '["https://dash.example.com"]')
    async with Server(load_settings()) as server:
        app = create_app(ApiContext.for_server(server))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            allowed = await client.get("/api/health", headers=origin)
            assert allowed.headers["access-control-allow-origin"] == "https://dash.example.com"
            preflight = await client.options("/api/events", headers={
                **origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type"})
            assert preflight.status_code == 200
            other = await client.get("/api/health", headers={"Origin": "https://evil.example.com"})
            assert "access-control-allow-origin" not in other.headers
