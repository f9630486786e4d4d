"""Dispatch benchmark on RabbitMQ, one `flowrelay server` and one `flowrelay worker` process.

(a) round trip of `run_deployment(wait=True)` of a trivial deployment: create → Running →
    Completed → the caller sees it, over N runs: min / median / p99;
(b) throughput: M trivial runs launched at once, created, executed and completed end to end.

    .venv/bin/python bench/dispatch.py [--runs 200] [--burst 2000] [--json bench/results/dispatch.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._broker_stats import bench_vhost  # noqa: E402
from bench._cluster import AMQP, FLOWRELAY, cluster, deploy, exited, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent

CLIENT = textwrap.dedent("""
    import asyncio, json, os, sys, time
    from engine import run_deployment
    from bench._cpu import per_run_ms, snapshot

    runs, burst = int(sys.argv[1]), int(sys.argv[2])
    pids = int(os.environ["_BENCH_SERVER_PID"]), int(os.environ["_BENCH_WORKER_PID"])

    async def main():
        name = "bench-trivial/bench"
        for _ in range(5):  # warm up: imports, connections, the worker's child process
            await run_deployment(name, {"i": 0}, timeout=60)
        trips = []
        cpu0 = snapshot(*pids)
        for i in range(runs):
            t0 = time.perf_counter()
            run = await run_deployment(name, {"i": i}, timeout=60)
            trips.append((time.perf_counter() - t0) * 1000)
            assert run.state.name == "Completed", run.state
        cpu1 = snapshot(*pids)
        await asyncio.sleep(0.5)  # let the last runs' trailing work (marking events sent) settle
        cpu2 = snapshot(*pids)
        t0 = time.perf_counter()
        done = await asyncio.gather(*(run_deployment(name, {"i": i}, timeout=600) for i in range(burst)))
        elapsed = time.perf_counter() - t0
        await asyncio.sleep(0.5)
        cpu3 = snapshot(*pids)
        ok = sum(1 for r in done if r.state.name == "Completed")
        print(json.dumps({"trips_ms": trips, "burst": burst, "burst_seconds": elapsed, "burst_completed": ok,
                          "cpu_trips": per_run_ms(cpu0, cpu1, runs),
                          "cpu_burst": per_run_ms(cpu2, cpu3, burst)}))

    asyncio.run(main())
""")


def _commits(port: int) -> tuple[float, float]:
    """(commits, works) of the server so far, from its /metrics."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("flowrelay_database_commits_total", "flowrelay_database_works_total"):
            values[name] = float(value)
    return values.get("flowrelay_database_commits_total", 0.0), values.get("flowrelay_database_works_total", 0.0)


def _per_run(before: tuple[Any, tuple[float, float]], after: tuple[Any, tuple[float, float]],
             runs: int) -> dict[str, float | None]:
    """What each run cost in messages (counted by RabbitMQ in the bench's own vhost: deploys
    and the bench's own calls included) and in the server's commits."""
    out: dict[str, float | None] = {
        "commits": (after[1][0] - before[1][0]) / runs, "works": (after[1][1] - before[1][1]) / runs,
    }
    for key in ("publish", "deliver_get", "confirm"):
        out[key] = (after[0][key] - before[0][key]) / runs if before[0] and after[0] else None
    return out


def _wait_watching(client: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """The client's output once it is done; stops it (and says why) as soon as a server or
    worker of the cluster exits, instead of letting it wait out its runs' timeouts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.communicate(timeout=1.0)
        except subprocess.TimeoutExpired:
            dead = exited()
            if dead is not None or time.monotonic() > deadline:
                client.kill()
                out, err = client.communicate()
                return out, f"{err}\nbenchmark stopped: {dead or 'timed out'}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", default=str(HERE / "results" / "dispatch.json"))
    parser.add_argument("--database-url", default="",
                        help="the server's database (an empty one, e.g. postgresql+asyncpg://...); "
                             "default: a fresh SQLite file")
    args = parser.parse_args()
    pool = f"bench-{os.getpid()}"
    port = free_port()
    extra = {"FLOWRELAY_API__ENABLED": "true", "FLOWRELAY_API__PORT": str(port)}
    if args.database_url:
        extra["FLOWRELAY_DATABASE__URL"] = args.database_url
    with bench_vhost(AMQP) as (amqp, broker_totals), \
            cluster(pool, concurrency=args.concurrency, extra_env=extra, amqp=amqp) as env:
        deploy(env, f"{HERE / 'flows.py'}:trivial", "bench", pool)
        counted_before = (broker_totals() if broker_totals else None, _commits(port))
        client = subprocess.Popen([sys.executable, "-c", CLIENT, str(args.runs), str(args.burst)],
                                  env={**env, "PYTHONPATH": str(HERE.parent)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        out, err = _wait_watching(client, timeout=1800)
        if client.returncode != 0:
            print(err[-4000:], file=sys.stderr)
            return 1
        data = json.loads(out.strip().splitlines()[-1])
        counted_after = (broker_totals() if broker_totals else None, _commits(port))
        # the deployment's bundle, as the worker cached it: fetched once per worker and hash
        cached = sorted((Path(env["FLOWRELAY_HOME"]) / "code").glob("*.zip"))
        workers = json.loads(subprocess.run([FLOWRELAY, "worker", "ls", "--json"], env=env,
                                            capture_output=True, text=True, check=True).stdout)
    trips = data["trips_ms"]
    result = {
        "round_trip_ms": {"runs": len(trips), "min": min(trips), "median": statistics.median(trips),
                          "p99": pct(trips, 0.99), "max": max(trips)},
        "burst": {"runs": data["burst"], "completed": data["burst_completed"],
                  "seconds": data["burst_seconds"], "runs_per_second": data["burst"] / data["burst_seconds"]},
        "cpu_ms_per_run": {"round_trip": data["cpu_trips"], "burst": data["cpu_burst"]},
        "targets": {"round_trip_median_ms": 15, "runs_per_second": 300},
        "per_run": _per_run(counted_before, counted_after, 5 + len(trips) + data["burst"]),
        "code": {"bundles_fetched": len(cached), "bundle_bytes": [p.stat().st_size for p in cached],
                 "runs": len(trips) + data["burst"],
                 "worker_code_loaded": [w.get("code") for w in workers]},
        "machine": {"cpus": os.cpu_count()},
    }
    rt, burst = result["round_trip_ms"], result["burst"]
    print(f"{'measure':<44}{'value':>12}  target")
    print(f"{'run_deployment(wait=True) round trip min':<44}{rt['min']:>10.2f}ms")
    print(f"{'  median':<44}{rt['median']:>10.2f}ms  < 15 ms")
    print(f"{'  p99':<44}{rt['p99']:>10.2f}ms")
    label = f"burst of {burst['runs']} runs: completed"
    print(f"{label:<44}{burst['completed']:>12}")
    print(f"{'  end-to-end throughput':<44}{burst['runs_per_second']:>8.1f}/s    >= 300/s")
    per_run = result["per_run"]
    for key, label in (("publish", "AMQP messages published per run"),
                       ("deliver_get", "AMQP messages delivered per run"),
                       ("confirm", "publisher confirms per run"),
                       ("commits", "database commits per run (server)"),
                       ("works", "units of write work per run (server)")):
        if per_run.get(key) is not None:
            print(f"{label:<44}{per_run[key]:>12.2f}" + ("  <= 8" if key == "publish" else ""))
    code = result["code"]
    print(f"{'bundles fetched by the worker':<44}{code['bundles_fetched']:>12}  (for {code['runs']} runs)")
    cpu = result["cpu_ms_per_run"]
    print(f"\n{'CPU ms per run':<18}" + "".join(f"{g:>10}" for g in cpu["burst"]))
    for phase in ("round_trip", "burst"):
        print(f"{phase:<18}" + "".join(f"{v:>10.2f}" for v in cpu[phase].values()))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
