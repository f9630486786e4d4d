"""Bearer tokens: 401 without or with an unknown token, 403 for a read token on a write
endpoint; the event stream's access_token parameter; no tokens = open, but loopback only."""

from __future__ import annotations

import uuid

import httpx
import pytest

from engine.api import ApiContext, create_app
from engine.api.server import check_settings, is_loopback
from engine.errors import ConfigError
from engine.server.app import Server
from engine.settings import ApiSettings, Settings, load_settings
from tests.api.conftest import READ, WRITE, Api

READS = ["/api/flow-runs", f"/api/flow-runs/{uuid.uuid4()}", "/api/deployments", "/api/automations",
         "/api/events", "/api/graph", "/metrics"]
WRITES = [f"/api/flow-runs/{uuid.uuid4()}/cancel", "/api/deployments/f/d/runs", "/api/deployments/f/d/pause",
          "/api/deployments/f/d/resume", "/api/automations/a/pause", "/api/automations/a/resume", "/api/events"]


@pytest.mark.parametrize("path", READS)
async def test_reads_need_a_token(api: Api, path: str) -> None:
    async with api.as_token(None) as anonymous, api.as_token("wrong") as wrong, \
            api.as_token(READ) as reader, api.as_token(WRITE) as writer:
        missing = await anonymous.get(path)
        assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["detail"]
        assert (await wrong.get(path)).status_code == 401
        assert (await reader.get(path)).status_code in (200, 404)
        assert (await writer.get(path)).status_code in (200, 404)


@pytest.mark.parametrize("path", WRITES)
async def test_writes_need_a_write_token(api: Api, path: str) -> None:
    body = {"event": "x.y"} if path == "/api/events" else {}
    async with api.as_token(None) as anonymous, api.as_token(READ) as reader:
        assert (await anonymous.post(path, json=body)).status_code == 401
        forbidden = await reader.post(path, json=body)
        assert forbidden.status_code == 403 and "api.tokens.write" in forbidden.json()["detail"]
    # a write token gets past auth (to a 404 for these unknown names, or success)
    assert (await api.client.post(path, json=body)).status_code in (200, 202, 404)


async def test_malformed_authorization_header_and_open_endpoints(api: Api) -> None:
    async with api.as_token(None, Authorization=f"Token {WRITE}") as odd:
        answer = await odd.get("/api/flow-runs")
        assert answer.status_code == 401 and "Bearer <token>" in answer.json()["detail"]
    async with api.as_token(None) as anonymous:
        health = await anonymous.get("/api/health")
        assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["version"]
        assert (await anonymous.get("/openapi.json")).status_code == 200
        assert (await anonymous.get("/")).status_code == 200


async def test_the_stream_takes_the_token_as_a_query_parameter(api: Api) -> None:
    async with api.as_token(None) as anonymous:
        assert (await anonymous.get("/api/stream")).status_code == 401
        assert (await anonymous.get("/api/stream", params={"access_token": "nope"})).status_code == 401
        # (a valid token opens the stream: tests/api/test_stream.py reads it over a real socket)
        assert (await anonymous.get("/api/flow-runs", params={"access_token": READ})).status_code == 401


async def test_without_tokens_everything_is_open(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWRELAY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path / 'open.db'}")
    monkeypatch.setenv("FLOWRELAY_BROKER__URL", f"memory://open-{uuid.uuid4().hex[:6]}")
    settings = load_settings()
    assert not settings.api.tokens.any
    async with Server(settings) as server:
        app = create_app(ApiContext.for_server(server))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            assert (await client.get("/api/flow-runs")).status_code == 200
            assert (await client.post("/api/events", json={"event": "x.y"})).status_code == 202


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("192.168.1.5", False), ("::", False), ("example.com", False),
])
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_no_token_refuses_a_public_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWRELAY_API__HOST", "0.0.0.0")
    settings = load_settings()
    with pytest.raises(ConfigError) as refused:
        Server(settings, serve_api=True)
    message = str(refused.value)
    assert "api.host" in message and "0.0.0.0" in message and "api.tokens" in message
    Server(settings)  # the API not asked for: nothing to refuse
    check_settings(ApiSettings(host="0.0.0.0", tokens={"read": ["r"]}))  # a token makes it fine


def test_the_api_off_is_not_served(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWRELAY_API__ENABLED", "false")
    assert Server(load_settings(), serve_api=True).api is None
