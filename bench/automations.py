"""Automations benchmark on RabbitMQ, one `flowrelay server` and one `flowrelay worker` process.

(a) Chain latency. An automation `flow-run-state-change` on `bench-upstream` Completed runs the
    deployment `bench-downstream/bench` with `upstream_batch_id` taken from the upstream's result.
    Chains run one after another (never two at once). Every figure comes from timestamps the
    database holds: the upstream's Completed state → the automation's firing (`automation.triggered`
    event, stamped when the rule engine evaluated the event) → the downstream run's `created` → its
    Running state. min / median / p99 over `--chains` chains.

    Who owns which part: Completed → evaluated is the engine's commit + outbox relay + one broker
    hop + the rule engine's decode and evaluation; evaluated → created is the rule engine's commit
    of the firing, its ack, the action's template and the engine's `create_deployment_run`;
    created → Running is the engine's dispatch to the pool queue and the worker's claim.

(b) Rule-engine throughput with 10, 1,000 and 10,000 automations loaded, of which only a few match.
    Half the automations are `flow-run-state-change` on `Completed` matching one deployment
    (`{deployment: etl-<i>/prod}`), half are `event` triggers on `order.created` matching one
    resource (`{id: customer/c<i>}`), each running a trivial deployment. The events are the
    same shapes: `flow-run.<flow>.Completed` events of deployments and `order.created` events of
    customers, mostly of deployments/customers no automation names (most runs of a real
    installation have no automation), one in `--match-every` aimed at one of the first ten
    automations (which fire and launch a run). Every event reaches the rule engine's queue:
    matching on `deployment` or `id` binds `flow-run.*.Completed` and `order.created`, so it is
    the index, not RabbitMQ, that discards the non-matching ones. (An automation matching a
    literal `flow` is narrowed to `flow-run.<flow>.Completed`: RabbitMQ then drops the events of
    other flows before the rule engine sees them, which is cheaper still and not measured here.)

    Per automation count: a separate publisher process publishes `--events` events straight to
    the events exchange (publisher confirms) while the server is stopped (SIGSTOP, a few seconds:
    a backlog, as after an outage); then the server is continued and the time it takes to
    evaluate the whole backlog is measured (the last event is a match of automation `a0`, whose
    live `matched` counter says when it was evaluated; events are evaluated in order). The
    server's CPU time over the drain gives the cost of one event, far less noisy than the wall
    clock on a shared machine. cost(10,000)/cost(10) is the ratio of those costs.

    .venv/bin/python bench/automations.py [--chains 200] [--events 30000] [--counts 10,1000,10000]
                                          [--servers 1] [--postgres] [--partitions 1]
                                          [--json bench/results/automations.json]

Several servers (`--servers 2`; `--partitions 8` to spread the rules over them) run on a fresh
PostgreSQL database at $FLOWRELAY_BENCH_POSTGRES_URL (as `bench/cluster.py`): all of them are
stopped for the backlog and continued together; the drain ends when every partition's queue is
empty and a0's last match is counted; the CPU is every server's. (The chain figures' CPU counts
the first server only.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._cluster import AMQP, FLOWRELAY, cluster, deploy  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGETS = {"completed_to_running_median_ms": 15, "events_per_second": 3000, "cost_ratio_10000_to_10": 1.5}

CHAIN_RULES = """\
automations:
  - name: bench-chain
    description: run downstream with the upstream's batch
    trigger:
      type: flow-run-state-change
      match: {flow: bench-upstream}
      expect: [Completed]
    actions:
      - type: run-deployment
        deployment: bench-downstream/bench
        parameters:
          upstream_batch_id: "{{ event.payload.result.batch_id }}"
"""

# (a) runs upstream after upstream, waits for each downstream's Completed event (pushed to a
# private queue, no polling), then reads every timestamp from the database.
CHAIN_CLIENT = textwrap.dedent("""
    import asyncio, datetime as dt, json, os, sys, uuid
    from engine import run_deployment
    from engine.broker import from_url
    from engine.broker.topology import Names, QueueSpec
    from engine.client import get_client
    from engine.runtime import embedded
    from bench._cpu import per_run_ms, snapshot

    chains, warmup = int(sys.argv[1]), int(sys.argv[2])
    pids = int(os.environ["_BENCH_SERVER_PID"]), int(os.environ["_BENCH_WORKER_PID"])

    async def main():
        names = Names()
        finished = asyncio.Queue()
        async with from_url(os.environ["FLOWRELAY_BROKER__URL"], connection_name="bench-chains") as broker:
            queue = await broker.declare_queue(QueueSpec.temporary(prefix=f"{names.prefix}.bench"))
            await broker.bind(queue, names.events, "flow-run.bench-downstream.Completed")

            async def on_message(message):
                await message.ack()
                finished.put_nowait(message.json())

            consumer = await broker.consume(queue, on_message, prefetch=64)
            pairs = []
            for i in range(warmup + chains):
                if i == warmup:
                    cpu0 = snapshot(*pids)
                up = await run_deployment("bench-upstream/bench", {"i": i}, timeout=60)
                assert up.state.name == "Completed", up.state
                event = await asyncio.wait_for(finished.get(), 60)
                assert event["payload"]["parameters"]["upstream_batch_id"] == f"b-{i}", event
                if i >= warmup:
                    pairs.append((up.id, uuid.UUID(event["resource"]["id"].split("/", 1)[1])))
            await asyncio.sleep(0.3)
            cpu1 = snapshot(*pids)
            await consumer.cancel()
        client = get_client(sync=False)
        firings = await embedded.call(lambda api: api.read_events("automation/bench-chain", limit=10 * (warmup + chains)))
        evaluated = {}
        for event in firings:
            if event.event == "automation.triggered":
                for rel in event.related:
                    if rel.get("role") == "triggering-event":
                        evaluated[rel["id"]] = event.occurred
        rows = []
        for up_id, down_id in pairs:
            up_states = await client.read_flow_run_states(up_id)
            down = await client.read_flow_run(down_id)
            down_states = await client.read_flow_run_states(down_id)
            completed = next(s.timestamp for s in up_states if s.name == "Completed")
            running = next(s.timestamp for s in down_states if s.name == "Running")
            fired = evaluated.get(f"flow-run/{up_id}")
            ms = lambda a, b: (b - a).total_seconds() * 1000
            rows.append({"created": ms(completed, down.created), "running": ms(completed, running),
                         "evaluated": ms(completed, fired) if fired else None,
                         "created_to_running": ms(down.created, running)})
        print(json.dumps({"rows": rows, "cpu": per_run_ms(cpu0, cpu1, chains)}))

    asyncio.run(main())
""")

# (b) one round: warm up, stop the server, publish the backlog from a separate process, continue
# the server, wait until the last event (a match of a0) has been evaluated.
ROUND_CLIENT = textwrap.dedent("""
    import asyncio, json, os, signal, subprocess, sys, time
    import aio_pika
    from automations.client import automations_client
    from engine.broker.topology import Names
    from engine.runtime import embedded
    from bench._cpu import snapshot

    from automations.service import rule_queue

    warm_file, events_file, expected_warm, expected = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    servers = [int(p) for p in os.environ["_BENCH_SERVER_PIDS"].split(",")]
    worker = int(os.environ["_BENCH_WORKER_PID"])
    names = Names()
    queue_names = [rule_queue(names, r) for r in range(int(os.environ["_BENCH_RULE_PARTITIONS"]))]

    def cpu():
        # every server's CPU (and RabbitMQ's, counted once)
        snaps = [snapshot(pid, worker) for pid in servers]
        return {"server": sum(s["server"] for s in snaps), "rabbitmq": snaps[0]["rabbitmq"]}

    async def matched():
        api = await automations_client()
        row = await api.read_automation(name="a0")
        return int(row["counters"].get("matched", 0))

    def publish(path):
        out = subprocess.run([sys.executable, "-m", "bench.automations", "--publish", path],
                             capture_output=True, text=True, check=True, env=os.environ)
        return json.loads(out.stdout.strip().splitlines()[-1])

    async def drained(target, channel, deadline):
        # The queue first (no cost to the server), then the live counter of a0.
        for queue_name in queue_names:
            while (await channel.declare_queue(queue_name, passive=True)).declaration_result.message_count:
                await asyncio.sleep(0.05)
                assert time.monotonic() < deadline, "the backlog did not drain in time"
        while await embedded.call(lambda api: matched()) < target:
            await asyncio.sleep(0.01)
            assert time.monotonic() < deadline, "the last event was not evaluated in time"
        return time.perf_counter()

    async def main():
        connection = await aio_pika.connect(os.environ["FLOWRELAY_BROKER__URL"])
        channel = await connection.channel()
        base = await embedded.call(lambda api: matched())
        publish(warm_file)
        await drained(base + expected_warm, channel, time.monotonic() + 120)
        before = cpu()
        for server in servers:
            os.kill(server, signal.SIGSTOP)
        try:
            published = publish(events_file)
        finally:
            cpu0 = cpu()
            t0 = time.perf_counter()
            for server in servers:
                os.kill(server, signal.SIGCONT)
        t1 = await drained(base + expected_warm + expected, channel, time.monotonic() + 600)
        cpu1 = cpu()
        await connection.close()
        print(json.dumps({"seconds": t1 - t0, "publish_seconds": published["seconds"],
                          "server_cpu_seconds": cpu1["server"] - cpu0["server"],
                          "rabbitmq_cpu_seconds": cpu1["rabbitmq"] - cpu0["rabbitmq"],
                          "server_cpu_while_stopped": cpu0["server"] - before["server"]}))

    asyncio.run(main())
""")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "min": min(values), "median": statistics.median(values),
            "p99": pct(values, 0.99), "max": max(values)}


def cli(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([FLOWRELAY, *args], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"flowrelay {' '.join(args)}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return proc.stdout


def client(env: dict[str, str], code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], env={**env, "PYTHONPATH": str(HERE.parent)},
                          capture_output=True, text=True, timeout=1800, cwd=HERE.parent)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- (b): automations and events ------------------------------------------------------------------
def automation_rules(first: int, last: int) -> str:
    lines = ["automations:"]
    for i in range(first, last):
        if i % 2 == 0:
            trigger = f"{{type: flow-run-state-change, match: {{deployment: etl-{i}/prod}}, expect: [Completed]}}"
        else:
            trigger = f"{{type: event, match: {{id: customer/c{i}}}, expect: [order.created]}}"
        lines += [f"  - name: a{i}", f"    trigger: {trigger}",
                  f"    actions: [{{type: run-deployment, deployment: bench-trivial/bench, parameters: {{i: {i}}}}}]"]
    return "\n".join(lines) + "\n"


def event_line(i: int, run: str, seq: int) -> str:
    """`routing key <TAB> body` of an event about deployment etl-i (even i) or customer c-i (odd i)."""
    from engine.events import routing_key_for
    from engine.schemas import Event

    if i % 2 == 0:
        event = Event(event="flow-run.Completed", resource={
            "id": f"flow-run/{run}", "name": f"run-{seq}", "flow": f"etl-{i}", "deployment": f"etl-{i}/prod",
            "tags": ["etl"], "seq": 4, "work_pool": "default",
        }, payload={"state": "Completed", "type": "COMPLETED", "message": None, "parameters": {"day": "2026-11-22"},
                    "run_count": 1, "result": {"rows": seq}})
    else:
        event = Event(event="order.created", resource={"id": f"customer/c{i}", "name": f"customer {i}"},
                      payload={"order": seq, "amount": 12.5})
    return f"{routing_key_for(event)}\t{event.model_dump_json()}\n"


def write_events(path: Path, n: int, match_every: int) -> int:
    """n events, one in `match_every` aimed at a0..a9, the last one at a0; returns the matches."""
    import uuid

    matches = 0
    with path.open("w") as fh:
        for seq in range(n):
            run = str(uuid.uuid4())
            if seq == n - 1:
                target = 0
            elif seq % match_every == match_every - 1:
                target = (seq // match_every) % 10
            else:
                target = 20_000 + seq % 5_000  # a deployment/customer no automation names
            matches += target < 10
            fh.write(event_line(target, run, seq))
    return matches


def publish_main(path: str) -> None:
    """The publisher process: every line of `path` to the events exchange, with confirms."""
    import asyncio

    from engine.broker import from_url
    from engine.broker.topology import Names

    lines = [line.rstrip("\n").split("\t", 1) for line in Path(path).read_text().splitlines() if line]

    async def main() -> None:
        exchange = Names().events
        async with from_url(os.environ.get("FLOWRELAY_BROKER__URL", AMQP), connection_name="bench-publisher") as broker:
            t0 = time.perf_counter()
            for start in range(0, len(lines), 500):
                await asyncio.gather(*(broker.publish(exchange, key, body.encode(), mandatory=False)
                                       for key, body in lines[start:start + 500]))
            print(json.dumps({"seconds": time.perf_counter() - t0, "events": len(lines)}))

    asyncio.run(main())


def a0_matches(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if '"etl-0/prod"' in line)


# --- main -----------------------------------------------------------------------------------------
def run_chains(env: dict[str, str], pool: str, chains: int, work: Path) -> dict:
    deploy(env, f"{HERE / 'automation_flows.py'}:upstream", "bench", pool)
    deploy(env, f"{HERE / 'automation_flows.py'}:downstream", "bench", pool)
    (work / "chain.yaml").write_text(CHAIN_RULES)
    cli(env, "automation", "apply", str(work / "chain.yaml"))
    data = client(env, CHAIN_CLIENT, str(chains), "10")
    rows = data["rows"]
    evaluated = [r["evaluated"] for r in rows if r["evaluated"] is not None]
    return {
        "chains": len(rows),
        "completed_to_evaluated_ms": summary(evaluated) if evaluated else None,
        "completed_to_created_ms": summary([r["created"] for r in rows]),
        "completed_to_running_ms": summary([r["running"] for r in rows]),
        "created_to_running_ms": summary([r["created_to_running"] for r in rows]),
        "cpu_ms_per_chain": data["cpu"],
    }


def run_rounds(env: dict[str, str], counts: list[int], events: int, match_every: int, work: Path) -> list[dict]:
    rounds = []
    loaded = 0
    for count in counts:
        if count > loaded:
            rules = work / f"rules-{count}.yaml"
            rules.write_text(automation_rules(loaded, count))
            t0 = time.perf_counter()
            cli({**env, "FLOWRELAY_BROKER__RPC_TIMEOUT_SECONDS": "600"}, "automation", "apply", str(rules))
            apply_seconds = time.perf_counter() - t0
            loaded = count
        warm, measured = work / "warm.jsonl", work / "events.jsonl"
        write_events(warm, 500, match_every)
        write_events(measured, events, match_every)
        data = client(env, ROUND_CLIENT, str(warm), str(measured), str(a0_matches(warm)), str(a0_matches(measured)))
        rounds.append({
            "automations": count, "events": events, "apply_seconds": apply_seconds,
            "drain_seconds": data["seconds"], "events_per_second": events / data["seconds"],
            "server_cpu_ms_per_1000_events": data["server_cpu_seconds"] * 1e6 / events,
            "events_per_server_cpu_second": events / max(data["server_cpu_seconds"], 1e-9),
            "rabbitmq_cpu_ms_per_1000_events": data["rabbitmq_cpu_seconds"] * 1e6 / events,
            "publish_seconds": data["publish_seconds"],
        })
    return rounds


def delete_subscription(prefix: str) -> None:
    import asyncio

    from automations.service import rule_queue
    from engine.broker import from_url
    from engine.broker.topology import Names

    async def main() -> None:
        async with from_url(AMQP, connection_name="flowrelay-bench-cleanup") as broker:
            for r in range(16):
                with contextlib.suppress(Exception):
                    await broker.delete_queue(rule_queue(Names(prefix), r))

    asyncio.run(main())


def print_table(result: dict) -> None:
    if "chains" in result:
        print_chains(result["chains"])
    if "throughput" in result:
        print_throughput(result)


def print_chains(a: dict) -> None:
    print(f"(a) {a['chains']} chains, one at a time        {'min':>8} {'median':>8} {'p99':>8}   target")
    for key, label, target in (
        ("completed_to_evaluated_ms", "upstream Completed -> rule evaluated", ""),
        ("completed_to_created_ms", "upstream Completed -> downstream created", ""),
        ("completed_to_running_ms", "upstream Completed -> downstream Running", "median < 15 ms"),
        ("created_to_running_ms", "  of which created -> Running (dispatch)", ""),
    ):
        s = a[key]
        if s:
            print(f"{label:<42}{s['min']:>8.2f} {s['median']:>8.2f} {s['p99']:>8.2f}   {target}")
    cpu = a["cpu_ms_per_chain"]
    print("CPU ms per chain (two runs)  " + "  ".join(f"{g} {v:.2f}" for g, v in cpu.items()))
    print()


def print_throughput(result: dict) -> None:
    print(f"(b) {'automations':>11} {'events':>8} {'drain s':>8} {'events/s':>9} {'srv CPU ms/1k ev':>17} "
          f"{'ev/CPU-s':>9} {'apply s':>8}")
    for r in result["throughput"]:
        print(f"    {r['automations']:>11} {r['events']:>8} {r['drain_seconds']:>8.2f} {r['events_per_second']:>9.0f} "
              f"{r['server_cpu_ms_per_1000_events']:>17.1f} {r['events_per_server_cpu_second']:>9.0f} "
              f"{r['apply_seconds']:>8.1f}")
    ratio = result["cost_ratio"]
    if ratio:
        print(f"    cost({ratio['high']})/cost({ratio['low']}): server CPU {ratio['cpu']:.2f}, wall clock "
              f"{ratio['wall']:.2f}   target <= {TARGETS['cost_ratio_10000_to_10']}; events/s target >= "
              f"{TARGETS['events_per_second']}")


def _measure(args: argparse.Namespace, counts: list[int], pool: str, work: Path, result: dict,
             extra: dict[str, str]) -> None:
    prefix = ""
    try:
        with cluster(pool, concurrency=8, servers=args.servers, extra_env=extra) as env:
            prefix = env["FLOWRELAY_BROKER__PREFIX"]
            deploy(env, f"{HERE / 'flows.py'}:trivial", "bench", pool)
            if args.chains:
                result["chains"] = run_chains(env, pool, args.chains, work)
            if counts:
                result["throughput"] = run_rounds(env, counts, args.events, args.match_every, work)
    finally:
        if prefix:
            delete_subscription(prefix)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chains", type=int, default=200)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--counts", default="10,1000,10000", help="automation counts, ascending")
    parser.add_argument("--match-every", type=int, default=500, help="one event in N matches an automation")
    parser.add_argument("--json", default=str(HERE / "results" / "automations.json"))
    parser.add_argument("--servers", type=int, default=1,
                        help="servers sharing the rule partitions; above 1 the database is PostgreSQL")
    parser.add_argument("--postgres", action="store_true",
                        help="a fresh PostgreSQL database ($FLOWRELAY_BENCH_POSTGRES_URL) instead of SQLite")
    parser.add_argument("--partitions", type=int, default=0,
                        help="rule partitions (automations.partitions, 1 by default; several need --postgres)")
    parser.add_argument("--publish", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        publish_main(args.publish)
        return 0
    counts = sorted(int(c) for c in args.counts.split(",") if c.strip())
    pool = f"bench-{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="flowrelay-bench-automations-"))
    postgres = args.postgres or args.servers > 1
    result: dict = {"targets": TARGETS, "machine": {"cpus": os.cpu_count()}, "servers": args.servers,
                    "database": "postgresql" if postgres else "sqlite",
                    "rule_partitions": args.partitions or 1}
    with contextlib.ExitStack() as stack:
        extra = {"_BENCH_RULE_PARTITIONS": str(result["rule_partitions"]),
                 "FLOWRELAY_AUTOMATIONS__PARTITIONS": str(result["rule_partitions"])}
        if postgres:
            from bench.cluster import database

            extra["FLOWRELAY_DATABASE__URL"] = stack.enter_context(database())
        _measure(args, counts, pool, work, result, extra)
    rounds = result.get("throughput", [])
    low, high = (rounds[0], rounds[-1]) if rounds else ({}, {})
    result["cost_ratio"] = {
        "low": low["automations"], "high": high["automations"],
        "cpu": high["server_cpu_ms_per_1000_events"] / low["server_cpu_ms_per_1000_events"],
        "wall": low["events_per_second"] / high["events_per_second"],
    } if len(rounds) > 1 else None
    print_table(result)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
