"""Bad input gets a clear error or a dead letter, the services keep running, nothing is lost.

- Messages on the broker (real RabbitMQ, a real `flowrelay server` and worker): bodies that are
  not JSON, lack fields, carry unknown event names or commands, are 20 MB, or come with a wrong
  content type — on the events exchange (the rule engine's queue, bound broadly), on a pool queue
  and on the command queue. Each is dead-lettered with its reason (or, for a command with a
  reply queue, answered with an error) and counted; a good message after them is processed.
- Parameters: wrong type, unknown, over `parameters.max_bytes`, a result that is not JSON — a
  Failed run with the message, or a refused command (CLI and `run_deployment`, real cluster).
  Also covered elsewhere: wrong type through the CLI (tests/integration/test_distributed.py::
  test_invalid_parameters_go_pending_to_failed), `flowrelay run` with bad parameters
  (tests/cli/test_cli_run.py), a non-JSON result in process (tests/runtime/test_flows.py).
- The CLI: unknown ids, bad flags, missing files, bad JSON, durations and ISO times — one line
  `Error: ...` on stderr, exit code 2, no traceback (a table, in process).

RabbitMQ 3.10's largest message is `max_message_size` = 128 MB (its default; `rabbitmqctl eval
'application:get_env(rabbit, max_message_size).'`), so a 20 MB body reaches our consumers: they
must refuse it themselves, which they do by what it holds (a 20 MB event that matches nothing is
acknowledged like any other; 20 MB of garbage is dead-lettered).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.broker import IncomingMessage, from_url
from engine.broker.rpc import PROTOCOL_VERSION
from engine.broker.topology import Names, QueueSpec
from tests.faults.conftest import FaultCluster, automation, fault_env, publish, wait_until
from tests.integration.conftest import _delete_topology

BAD_FLOWS = Path(__file__).parent / "bad_flows.py"
MB = 1024 * 1024
#: parameters.max_bytes of the cluster: small enough for a command-line argument to exceed
#: (Linux caps one argument at 128 KB).
PARAMS_LIMIT = 50_000


@pytest.fixture
def bad(amqp_url: str, tmp_path: Path) -> Iterator[FaultCluster]:
    env = fault_env(amqp_url, tmp_path)
    env["FLOWRELAY_PARAMETERS__MAX_BYTES"] = str(PARAMS_LIMIT)
    c = FaultCluster(env, tmp_path, flows=BAD_FLOWS)
    try:
        yield c
    finally:
        c.stop()
        _delete_topology(amqp_url, env["FLOWRELAY_BROKER__PREFIX"], [c.pool, "default"])


class Pickled:
    """Unpickling this creates a file: proof that a consumer never unpickles."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def _event(name: str, resource: dict[str, Any], payload: dict[str, Any] | None = None,
           **extra: Any) -> bytes:
    return json.dumps({"id": str(uuid.uuid4()), "event": name, "resource": resource,
                       "occurred": "2026-11-23T10:00:00+00:00", "payload": payload or {}, **extra}).encode()


PROBE_RULES = """
    automations:
      - name: probe
        trigger: {type: event, match: {id: "probe/*"}}   # no `expect`: bound to every event
        actions:
          - type: run-deployment
            deployment: probe/faults
            parameters: {n: "{{ event.payload.n }}"}
"""


@pytest.mark.rabbitmq
def test_bad_messages_on_every_queue_are_dead_lettered_or_answered(bad: FaultCluster) -> None:
    # Given a server, a worker, and a rule engine whose queue is bound to every event
    bad.start_server()
    bad.start_worker()
    bad.deploy("probe", "faults")
    bad.apply(PROBE_RULES)
    url = bad.env["FLOWRELAY_BROKER__URL"]
    names = Names(bad.env["FLOWRELAY_BROKER__PREFIX"])
    dispatch = f"dispatch.{bad.pool}"
    unpickled = bad.workdir / "unpickled"
    pickled = pickle.dumps(Pickled(str(unpickled)))
    huge_garbage = b"\x80" + b"x" * (20 * MB)
    huge_unmatched = _event("no.such.event", {"id": "nothing/1"}, {"blob": "y" * (20 * MB)})
    good = [_event("probe.hit", {"id": f"probe/{n}"}, {"n": n}) for n in range(3)]
    ev = names.events
    messages = [
        # to the rule engine (routing keys of events)
        (ev, "some.event", b"\x00\xff not json", {}),
        (ev, "some.event", b'{"resource": {"id": "probe/9"}}', {}),           # no `event`
        (ev, "some.event", b'{"event": "x", "resource": [1, 2]}', {}),       # resource not an object
        (ev, "some.event", pickled, {"content_type": "application/python-pickle"}),
        (ev, "some.event", huge_garbage, {"content_type": "application/octet-stream"}),
        (ev, "no.such.event", huge_unmatched, {}),                           # valid: matches nothing
        (ev, "probe.hit", good[0], {"content_type": "text/plain"}),         # JSON is JSON
        # to the pool's queue
        (ev, dispatch, b"\x00\xff not json", {}),
        (ev, dispatch, b'{"event": "flow-run.dispatched"}', {}),            # no payload
        (ev, dispatch, json.dumps({"event": "no.such.event", "payload": {
            "flow_run_id": str(uuid.uuid4()), "entrypoint": "bad_flows.py:probe"}}).encode(), {}),
        (ev, dispatch, pickled, {"content_type": "application/python-pickle"}),
        (ev, dispatch, huge_garbage, {}),
        (ev, "probe.hit", good[1], {}),
    ]

    # When they are all published, and then commands that are not commands
    publish(url, messages)
    replies, unanswered = asyncio.run(_bad_commands(url, names))

    # Then every command with a reply queue got an error reply naming the problem
    assert [(r["error"]["type"], r["error"]["message"]) for r in replies] == [
        ("BadRequest", "request body is not JSON: Expecting property name enclosed in double quotes: "
                       "line 1 column 3 (char 2)"),
        ("BadRequest", "request has no 'method' string"),
        ("BadCommand", "unknown command 'drop_database'"),
        ("BadCommand", "command 'read_flow_run' has bad parameters: flow_run_id: Input should be a "
                       "valid UUID, invalid character: found `n` at 0; bogus: Unexpected keyword argument"),
        ("BadRequest", "'params' of 'read_flow_runs' must be a JSON object, not list"),
        # 20 MB of `[`: json.loads raised RecursionError, requeued for ever on the command queue
        ("BadRequest", "request body is JSON nested too deeply"),
        ("ProtocolMismatch", f"request 'read_flow_runs' not run: the caller speaks flowrelay protocol 1, "
                             f"this side {PROTOCOL_VERSION}: run the same flowrelay version on servers, "
                             "workers and clients (upgrade the older side)"),
    ]
    assert unanswered == 0
    # And the server still serves commands; a good event after all that is processed
    publish(url, [(ev, "probe.hit", good[2], {})])

    def probes() -> list[int]:
        runs = bad.runs("probe").values()
        return sorted(int(r.parameters["n"]) for r in runs if r.state == "Completed")

    assert wait_until(lambda: probes() == [0, 1, 2], timeout=60, what="the 3 good events ran")
    assert automation(bad, "probe")["counters"]["fired"] == 3

    # And each bad message is in the dead-letter queue once, with why
    dead: list[dict[str, Any]] = []
    wait_until(lambda: dead.extend(bad.dead_letters()) or len(dead) >= 12, timeout=60,
               what="12 dead letters")
    assert len(dead) == 12, [(d["routing_key"], d["body"][:40]) for d in dead]
    from_rules = [d for d in dead if d["routing_key"] == "some.event"]
    from_pool = [d for d in dead if d["routing_key"] == dispatch]
    from_commands = [d for d in dead if d["routing_key"] == names.commands]
    assert (len(from_rules), len(from_pool), len(from_commands)) == (5, 5, 2)
    for d in from_commands:  # no reply queue: nobody to answer, so kept for inspection
        [death] = d["headers"]["x-death"]
        assert (death["reason"], death["queue"], death["count"]) == ("rejected", names.commands, 1)
    for d in from_rules:
        assert d["headers"]["x-flowrelay-reason"].startswith("not a flowrelay event"), d["headers"]
    for d in from_pool:
        [death] = d["headers"]["x-death"]
        assert (death["reason"], death["queue"], death["count"]) == ("rejected", names.pool(bad.pool), 1)
    assert any(len(d["body"]) > 20 * MB for d in from_rules) and any(len(d["body"]) > 20 * MB for d in from_pool)
    # counted: one log line per dead letter, with its reason
    server_log, worker_log = bad.log_of("server-0"), bad.log_of("worker-1")
    assert server_log.count("event dead-lettered") == 5
    assert worker_log.count("dead-lettering a") == len(from_pool)
    assert server_log.count("malformed RPC request") == 7  # 5 answered, 2 dead-lettered
    # never unpickled, and both processes still up
    assert not unpickled.exists()
    assert all(p.poll() is None for p in bad.procs)


async def _bad_commands(url: str, names: Names) -> tuple[list[dict[str, Any]], int]:
    """Raw requests on the command queue: 7 with a reply queue, 2 without (dead-lettered)."""
    bodies = [
        b"{ not json",
        b'{"params": {}}',
        json.dumps({"v": PROTOCOL_VERSION, "method": "drop_database", "params": {}}).encode(),
        json.dumps({"v": PROTOCOL_VERSION, "method": "read_flow_run",
                    "params": {"flow_run_id": "not-a-uuid", "bogus": 1}}).encode(),
        json.dumps({"method": "read_flow_runs", "params": ["x"]}).encode(),
        b"[" * (20 * MB),
        json.dumps({"method": "read_flow_runs", "params": {}}).encode(),  # an unversioned client
    ]
    replies: dict[str, dict[str, Any]] = {}
    got = asyncio.Event()
    async with from_url(url, connection_name="flowrelay-faults-commands") as broker:
        reply_queue = await broker.declare_queue(QueueSpec.temporary("probe.reply"))

        async def on_reply(message: IncomingMessage) -> None:
            replies[message.correlation_id or ""] = message.json()
            await message.ack()
            if len(replies) == len(bodies):
                got.set()

        consumer = await broker.consume(reply_queue, on_reply, prefetch=10)
        for i, body in enumerate(bodies):
            await broker.publish("", names.commands, body, reply_to=reply_queue, correlation_id=str(i))
        for body in (b"\x00 no reply queue", json.dumps({"method": "read_flow_runs"}).encode()[:-3]):
            await broker.publish("", names.commands, body)
        async with asyncio.timeout(60):
            await got.wait()
        await consumer.cancel()
    ordered = [replies[str(i)] for i in range(len(bodies))]
    return ordered, len(bodies) - len(replies)


@pytest.mark.rabbitmq
def test_bad_parameters_and_results_fail_the_run_or_refuse_the_command(bad: FaultCluster) -> None:
    bad.start_server()
    bad.start_worker()
    for fn in ("typed", "opaque", "echo"):
        bad.deploy(fn, "faults")

    # Huge parameters (CLI): refused before a run exists, with the size and the limit
    blob = json.dumps({"blob": "x" * (PARAMS_LIMIT + 10)})
    proc = bad.cli("deployment", "run", "echo/faults", "--params-json", blob, check=False)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("Error: flow run parameters are 50,022 bytes as JSON, over the limit of "
                           "50,000 bytes (parameters.max_bytes)"), line

    # The same through run_deployment, and wrong and unknown parameters, in a user's script
    script = f"""
import json
from engine import run_deployment
from engine.errors import ParameterValidationError
try:
    run_deployment("echo/faults", parameters={{"blob": "x" * {PARAMS_LIMIT + 10}}}, timeout=60)
except ParameterValidationError as exc:
    print("refused:", exc)
out = {{}}
for label, params in (("wrong", {{"n": "oops"}}), ("unknown", {{"n": 1, "bogus": 2}})):
    run = run_deployment("typed/faults", parameters=params, timeout=60)
    out[label] = [run.state.name, run.state.message]
print(json.dumps(out))
"""
    proc = bad.python(script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    refused, result = proc.stdout.strip().splitlines()
    assert refused.startswith("refused: flow run parameters are 50,022 bytes as JSON"), refused
    out = json.loads(result)
    assert out["wrong"][0] == "Failed" and "n: Input should be a valid integer" in out["wrong"][1], out
    assert out["unknown"][0] == "Failed" and "bogus: unknown parameter" in out["unknown"][1], out

    # A result that is not JSON (CLI): the run fails saying so
    proc = bad.cli("deployment", "run", "opaque/faults", "--watch", "--json", check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    [opaque] = bad.runs("opaque").values()
    assert opaque.state == "Failed"
    assert "not JSON-serialisable" in bad.cli_json("flow-run", "inspect", opaque.id)["states"][-1]["message"]  # type: ignore[index]

    # Nothing lost, nothing invented: two typed runs, neither ever Running; echo never created
    typed = bad.runs("typed").values()
    assert sorted(r.state or "" for r in typed) == ["Failed", "Failed"]
    assert all("Running" not in r.state_names for r in typed)
    assert bad.runs("echo") == {}
    # and a good run after all that completes
    proc = bad.cli("deployment", "run", "typed/faults", "-p", "n=21", "--watch", "--json")
    assert json.loads(proc.stdout)["state"]["name"] == "Completed"


# --- the CLI, in process (embedded mode) --------------------------------------------------------

FLOWS = """
    from engine import flow

    @flow(name="typed")
    def typed(n: int) -> int:
        return n
"""
RULES = """
    automations:
      - name: ok
        trigger: {type: event, expect: [tick]}
        actions: [{type: emit-event, event: tock}]
"""
UNKNOWN = str(uuid.UUID(int=7))
HUGE = json.dumps({"n": 1, "blob": "x" * 1_100_000})

CLI_CASES: list[tuple[list[str], str]] = [
    # unknown ids (flow-run inspect/logs: tests/cli/test_cli_flow_runs.py; automation inspect/
    # pause: tests/cli/test_cli_automations.py)
    (["deployment", "inspect", "typed/nope"], "deployment 'typed/nope' not found"),
    (["deployment", "run", "nope/main"], "not found"),
    (["deployment", "pause", "typed/nope"], "not found"),
    (["deployment", "next", "typed/nope"], "not found"),
    (["automation", "delete", "nope"], "nope"),
    (["automation", "explain", "ok", "--event", UNKNOWN], UNKNOWN),
    (["automation", "explain", "ok", "--event", "not-an-id"], "not-an-id"),
    (["automation", "explain", "nope", "--event", UNKNOWN], "nope"),
    # bad flags
    (["deployment", "run", "typed/main", "--bogus"], "No such option: --bogus"),
    (["worker", "--concurrency", "0"], "--concurrency"),
    (["flow-run", "ls", "--limit", "-5"], "--limit"),
    (["events", "emit"], "Missing argument"),
    # missing files
    (["deploy", "missing.py:typed", "--name", "x", "--pool", "default"], "missing.py"),
    (["deploy", "--file", "missing.yaml"], "missing.yaml"),
    (["automation", "validate", "missing.yaml"], "missing.yaml: no such file"),
    (["automation", "test", "rules.yaml", "--events", "missing.jsonl"], "missing.jsonl: no such file"),
    # bad JSON
    (["deployment", "run", "typed/main", "--params-json", "{bad"], "--params-json: not valid JSON"),
    (["deployment", "run", "typed/main", "--params-json", "[1]"], "--params-json: expected a JSON object"),
    (["events", "emit", "x", "--payload", "{bad"], "--payload"),
    (["events", "emit", "x", "--payload", "[1]"], "--payload"),
    (["events", "emit", "x", "--resource", "nope"], "--resource"),
    # parameters over parameters.max_bytes (1 MB): refused, no run created
    (["deployment", "run", "typed/main", "--params-json", HUGE], "over the limit of 1,000,000 bytes"),
    # bad durations
    (["deployment", "run", "typed/main", "--start-in", "soon"], "'soon' is not a duration"),
    (["deployment", "run", "typed/main", "--start-in", "-5m"], "-5m"),
    (["deployment", "run", "typed/main", "--start-in", "99999999999d"], "too long"),
    # bad ISO times
    (["events", "replay", "--since", "yesterday"], "--since 'yesterday': expected an ISO time"),
    (["automation", "test", "rules.yaml", "--since", "2026-13-45"], "--since '2026-13-45'"),
    (["automation", "test", "rules.yaml", "--since", "2026-11-23", "--until", "soon"], "--until 'soon'"),
    (["deployment", "next", "typed/main", "--after", "tomorrow"], "tomorrow"),
]


def test_cli_errors_are_one_line_exit_2_no_traceback(
    cli: Any, write: Any, restore_process_state: None,
) -> None:
    """The table above, on one embedded home (a deployment and an automation exist)."""
    write("flows.py", FLOWS)
    write("rules.yaml", RULES)
    assert cli("deploy", "flows.py:typed", "--name", "main", "--pool", "default").code == 0
    assert cli("automation", "apply", "rules.yaml").code == 0
    wrong = []
    for args, expected in CLI_CASES:
        result = cli(*args)
        lines = result.err.strip().splitlines()
        if not (result.code == 2 and result.out == "" and len(lines) == 1
                and lines[0].startswith("Error: ") and expected in lines[0]):
            wrong.append((args, result.code, result.out[-300:], result.err[-1000:]))
    assert not wrong, "\n".join(map(repr, wrong))
    assert cli("flow-run", "ls", "--json").json() == []  # nothing half-made


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000])
def test_deeply_nested_json_is_a_bad_request_not_a_crash(body: bytes) -> None:
    """Regression: json.loads raises RecursionError (not a ValueError) on deep nesting; the
    command server requeued such a request for ever (the command queue has no delivery limit)."""
    from engine.broker.rpc import parse_request
    from workers.dispatch import parse_dispatch
    from workers.errors import BadDispatch

    with pytest.raises(ValueError, match="nested too deeply"):
        parse_request(body)
    with pytest.raises(BadDispatch, match="nested too deeply"):
        parse_dispatch(body)


@pytest.mark.parametrize(("payload", "expected"), [
    ({"attempts": "two"}, "'attempts' must be a count (an integer >= 0), got 'two'"),
    ({"attempts": -1}, "'attempts' must be a count (an integer >= 0), got -1"),
    ({"attempt": True}, "'attempt' must be a count (an integer >= 0), got True"),
    ({"code": "sha256:abc"}, "'code' must be an object, got str"),
    ({"code": {"bundle": 7}}, "code.bundle must be a hash string"),
])
def test_a_dispatch_with_a_bad_count_or_code_says_what_is_wrong(payload: dict, expected: str) -> None:
    import json
    import uuid

    from workers.dispatch import parse_dispatch
    from workers.errors import BadDispatch

    body = {"payload": {"flow_run_id": str(uuid.uuid4()), "entrypoint": "flows.py:etl", **payload}}
    with pytest.raises(BadDispatch) as error:
        parse_dispatch(json.dumps(body).encode())
    assert expected in str(error.value)
