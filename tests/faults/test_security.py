"""Security: what a rule file, a config file or a template cannot do, where webhooks cannot go,
and where credentials never appear.

- YAML with Python object tags — in a rule file, in config.yaml (settings and its `deployments:`
  list) and in a deployments file — is refused, never constructed: a tag that would create a file
  if it ran leaves no file.
- Templates: the sandbox's escapes and resource abuse are tests/automations/test_templates.py
  (`test_sandbox_refuses_escapes`, `test_resource_abuse_is_refused_before_it_is_built`); here, a
  rule whose template tries both fails its action, not the rule engine.
- `call-webhook` against real local HTTP servers: a redirect to another host is refused and that
  host never contacted; a slow endpoint trips the per-attempt timeout; the action's own deadline
  (`automations.action_timeout_seconds`) bounds all attempts together.
- Credentials: a real server and worker whose broker and database URLs hold a sentinel password
  (a RabbitMQ user made for the test; PostgreSQL with trust authentication), at DEBUG level,
  through good commands, failing ones and a refused connection: the sentinel is in no process's
  output and not in `flowrelay config show` (plain or `--json`).
- TLS: an `amqps://` URL is accepted by the configuration and makes the broker open a TLS
  connection (a TLS ClientHello on the wire, seen by a local listener: there is no TLS listener
  on the test machine); `amqp://` speaks plain AMQP.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from automations.actions import ActionRunner
from automations.models import CallWebhookAction
from engine.broker import from_url
from engine.broker.errors import BrokerUnavailable
from engine.settings import load_settings
from tests.conftest import POSTGRES_URL, amqp_vhost, fresh_postgres_database, require_service
from tests.faults.conftest import FLOWS, FaultCluster, fault_env
from tests.integration.conftest import _delete_topology

# --- YAML: never constructed ---------------------------------------------------------------------


def _tag(marker: Path) -> str:
    return f"!!python/object/apply:os.system ['touch {marker}']"


@pytest.mark.usefixtures("restore_process_state")
@pytest.mark.parametrize("where", ["rule file", "config.yaml", "config deployments", "deployments file"])
def test_python_tags_are_refused_and_never_run(cli: Any, write: Any, tmp_path: Path, where: str) -> None:
    marker = tmp_path / "pwned"
    tag = _tag(marker)
    if where == "rule file":
        path = write("rules.yaml", f"automations:\n  - name: x\n    trigger: {tag}\n"
                                   "    actions: [{type: emit-event, event: x}]\n")
        results = [cli("automation", "validate", str(path)), cli("automation", "apply", str(path)),
                   cli("automation", "test", str(path), "--since", "2026-11-23")]
    elif where == "config.yaml":
        write("config.yaml", f"logging:\n  level: {tag}\n")
        results = [cli("config", "show"), cli("flow-run", "ls")]
    elif where == "config deployments":
        write("config.yaml", f"deployments:\n  - name: x\n    entrypoint: {tag}\n")
        results = [cli("config", "show"), cli("deploy", "--help")]
    else:
        path = write("deployments.yaml", f"deployments:\n  - name: x\n    entrypoint: {tag}\n    work_pool: p\n")
        results = [cli("deploy", "--file", str(path))]

    for result in results:
        if result.code == 0:  # `deploy --help` reads no config
            continue
        assert result.code in (1, 2), result
        assert "Traceback" not in result.err
        assert "python/object" in result.err or "not valid YAML" in result.err, result.err
    assert not marker.exists(), f"a YAML tag ran code from the {where}"


def test_settings_loader_refuses_tags_with_the_line(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "c.yaml").write_text(f"broker:\n  url: memory://\nhome: {_tag(marker)}\n")
    with pytest.raises(Exception, match=r"c.yaml:3: not valid YAML") as caught:
        load_settings(tmp_path / "c.yaml")
    assert type(caught.value).__name__ == "ConfigError" and not marker.exists()


# --- templates in a running rule engine ------------------------------------------------------------


async def test_hostile_templates_fail_their_action_not_the_rule_engine(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.schemas import DeploymentSpec, Event, FlowRunFilter
    from engine.server.app import Server

    monkeypatch.setenv("FLOWRELAY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    monkeypatch.setenv("FLOWRELAY_BROKER__URL", f"memory://sec-{uuid.uuid4().hex[:6]}")
    rules = """
automations:
  - name: hostile
    trigger: {type: event, expect: [poke]}
    actions:
      - {type: run-deployment, deployment: d/main, parameters: {x: "{{ ''.__class__.__mro__[1].__subclasses__() }}"}}
      - {type: run-deployment, deployment: d/main, parameters: {x: "{{ [0] * 10**9 }}"}}
      - {type: run-deployment, deployment: d/main, parameters: {x: "{{ event.payload.n }}"}}
"""
    async with Server(load_settings()) as server:
        assert server.automations is not None
        await server.service.register_deployment(DeploymentSpec(
            name="main", flow_name="d", entrypoint="flows/d.py:d", work_pool="pool"))
        await server.automations.apply_automations([{"source": "r.yaml", "text": rules}])
        await server.service.emit_event(Event(event="poke", resource={"id": "x/1"}, payload={"n": 7}))
        async with asyncio.timeout(20):
            while True:
                detail = await server.automations.read_automation("hostile")
                if detail["firings"] and detail["firings"][0]["status"] != "pending":
                    break
                await asyncio.sleep(0.05)
        results = detail["firings"][0]["results"]
        assert [r["ok"] for r in results] == [False, False, True]
        assert "is not allowed" in results[0]["error"] and "__class__" in results[0]["error"]
        assert "over the limit of 1,000,000 items" in results[1]["error"]
        [run] = await server.service.read_flow_runs(FlowRunFilter(deployment_name="d/main"))
        assert run.parameters == {"x": 7}


# --- webhooks against real local servers -----------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: list[str]
    redirect_to: str

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.hits.append(self.path)
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.end_headers()
            return
        if self.path == "/slow":
            time.sleep(3)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_servers() -> Iterator[tuple[str, list[str], str, list[str]]]:
    """An allowed server on 127.0.0.1 and an 'other host' on localhost (not on the allow-list)."""
    servers = []
    hit_lists: list[list[str]] = [[], []]
    for hits in hit_lists:
        handler = type("H", (_Handler,), {"hits": hits, "redirect_to": ""})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    allowed = f"http://127.0.0.1:{servers[0].server_port}"
    other = f"http://localhost:{servers[1].server_port}"
    servers[0].RequestHandlerClass.redirect_to = f"{other}/stolen"  # type: ignore[attr-defined]
    try:
        yield allowed, hit_lists[0], other, hit_lists[1]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _webhook(url: str, **fields: Any) -> CallWebhookAction:
    return CallWebhookAction.model_validate({"type": "call-webhook", "url": url, **fields})


async def _nothing(name: str, enabled: bool) -> None:
    return None


async def test_webhooks_redirects_and_timeouts_on_real_servers(
    http_servers: tuple[str, list[str], str, list[str]],
) -> None:
    allowed, hits, other, other_hits = http_servers
    runner = ActionRunner(None, set_automation_enabled=_nothing,  # type: ignore[arg-type]
                          webhook_allow_hosts=["127.0.0.1"], timeout=2.0)
    context = {"event": {"id": "e1", "event": "x"}}

    async def call(action: CallWebhookAction) -> Any:
        return await runner.run_one("a", "f1", 0, action, context, caused_by={})

    ok = await call(_webhook(f"{allowed}/ok"))
    assert ok.ok and ok.detail["status"] == 200

    # a redirect to another host: refused, and that host is never contacted
    redirected = await call(_webhook(f"{allowed}/redirect"))
    assert not redirected.ok and "redirects are not followed" in (redirected.error or "")
    assert f"{other}/stolen" in (redirected.error or "")
    # and a host that is not on the allow-list is never called directly either
    direct = await call(_webhook(f"{other}/x"))
    assert not direct.ok and "not on automations.webhook_allow_hosts" in (direct.error or "")
    assert other_hits == []

    # a slow endpoint trips the per-attempt timeout (one attempt, no retries)
    slow = await call(_webhook(f"{allowed}/slow", timeout="0.5s", retries=0))
    assert not slow.ok and "failed after 1 attempt(s): ReadTimeout" in (slow.error or ""), slow.error
    # the action's deadline bounds every attempt together: 10 retries of 1.5 s do not fit in 2 s
    bounded = await call(_webhook(f"{allowed}/slow", timeout="1.5s", retries=10))
    assert not bounded.ok and "timed out after 2s" in (bounded.error or ""), bounded.error
    assert hits.count("/slow") - 1 < 11  # the deadline cut the retries short
    assert hits.count("/redirect") == 1 and hits.count("/ok") == 1


# --- credentials never logged ----------------------------------------------------------------------

SENTINEL = f"S3ntinel{uuid.uuid4().hex[:12]}"
WRONG = f"Wr0ng{uuid.uuid4().hex[:12]}"


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def secret_cluster(amqp_url: str, tmp_path: Path) -> Iterator[FaultCluster]:
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    user = f"frsec-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_user", user, SENTINEL)
    _rabbitmqctl("set_permissions", "-p", amqp_vhost(amqp_url), user, ".*", ".*", ".*")
    with fresh_postgres_database("flowrelay_sec") as database_url:
        dbname = database_url.rsplit("/", 1)[1]
        host = amqp_url.split("@", 1)[1]
        secret_amqp = f"amqp://{user}:{SENTINEL}@{host}"
        pg = POSTGRES_URL.split("://", 1)[1].split("@", 1)
        pg_user, pg_host = pg[0].split(":")[0], pg[1].rsplit("/", 1)[0]
        env = fault_env(secret_amqp, tmp_path)
        env.update({
            "FLOWRELAY_DATABASE__URL": f"postgresql+asyncpg://{pg_user}:{SENTINEL}@{pg_host}/{dbname}",
            "FLOWRELAY_LOGGING__LEVEL": "DEBUG",
        })
        c = FaultCluster(env, tmp_path, flows=FLOWS)
        c.secret_user = user  # type: ignore[attr-defined]
        try:
            yield c
        finally:
            c.stop()
            _delete_topology(amqp_url, env["FLOWRELAY_BROKER__PREFIX"], [c.pool, "default"])
            _rabbitmqctl("delete_user", user)


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_credentials_never_appear_in_logs_or_config_show(secret_cluster: FaultCluster) -> None:
    c = secret_cluster
    c.start_server()
    c.start_worker()
    c.deploy("ping", "faults")
    outputs: list[str] = []

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        from tests.integration.conftest import FLOWRELAY

        proc = subprocess.run([FLOWRELAY, *args], env=env or c.env, cwd=c.workdir, capture_output=True,
                              text=True, timeout=120)
        outputs.extend([proc.stdout, proc.stderr])
        return proc

    # good commands, a run, failing commands, and the configuration shown both ways
    assert run("deployment", "run", "ping/faults", "-p", "n=1", "--watch").returncode == 0
    assert run("deployment", "run", "ping/faults", "-p", "n=oops", "--watch").returncode == 1
    assert run("deployment", "run", "nope/faults").returncode == 2
    assert run("flow-run", "inspect", str(uuid.UUID(int=3))).returncode == 2
    shown = run("config", "show")
    shown_json = run("config", "show", "--json")
    assert shown.returncode == shown_json.returncode == 0
    settings = json.loads(shown_json.stdout)
    assert "****" in settings["broker"]["url"] and "****" in settings["database"]["url"], settings
    # a refused connection: the wrong password is not echoed either
    wrong = {**c.env, "FLOWRELAY_BROKER__URL": c.env["FLOWRELAY_BROKER__URL"].replace(SENTINEL, WRONG)}
    refused = run("flow-run", "ls", env=wrong)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines()[-1].startswith("Error: cannot connect to RabbitMQ"), refused.stderr

    logs = [(c.workdir / name).read_text() for name in sorted(p.name for p in c.workdir.glob("*.log"))]
    assert sum(len(log) for log in logs) > 10_000, "DEBUG logs expected from the server and worker"
    for text in [*outputs, *logs]:
        assert SENTINEL not in text and WRONG not in text
    assert c.secret_user in "".join(logs)  # type: ignore[attr-defined] - the URLs were logged, masked


# --- TLS ---------------------------------------------------------------------------------------


def _first_bytes(url_for_port: str) -> bytes:
    """Connect a broker to a local listener and return what it sent first."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    seen: list[bytes] = []

    def accept() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5)
        try:
            seen.append(conn.recv(16))
        finally:
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()

    async def connect() -> None:
        broker = from_url(url_for_port.format(port=port), connection_name="flowrelay-tls-probe")
        with pytest.raises(BrokerUnavailable) as caught:
            await broker.connect()
        assert SENTINEL not in str(caught.value)

    try:
        asyncio.run(connect())
    finally:
        thread.join(10)
        listener.close()
    return seen[0] if seen else b""


def test_amqps_opens_a_tls_connection_and_amqp_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWRELAY_BROKER__URL", f"amqps://user:{SENTINEL}@broker.example:5671/prod?cafile=/etc/ssl/ca.pem")
    assert load_settings().broker.url.startswith("amqps://")  # accepted by the configuration

    tls = _first_bytes(f"amqps://user:{SENTINEL}@127.0.0.1:{{port}}/")
    plain = _first_bytes(f"amqp://user:{SENTINEL}@127.0.0.1:{{port}}/")

    assert tls[:1] == b"\x16" and tls[1:2] == b"\x03", tls  # a TLS handshake record (ClientHello)
    assert plain.startswith(b"AMQP\x00\x00\x09\x01"), plain  # the AMQP 0-9-1 protocol header
