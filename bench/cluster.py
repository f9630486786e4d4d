"""Cluster benchmark: 1, 2 and 3 `flowrelay server` processes on one PostgreSQL database (a fresh
database each), two `flowrelay worker` processes, RabbitMQ.

Per server count:

(a) throughput: `--burst` trivial runs launched at once by one client (`run_deployment`, wait),
    created, executed and completed end to end: runs/s, and CPU milliseconds per run of every
    process group (the servers, the workers, their warm children, RabbitMQ, PostgreSQL, the
    client), read from /proc;
(b) takeover (2 and 3 servers): `--timed` runs are created to start 4–8 s later (each waits in
    the dispatch timer of the server that created it), then at once one server is killed with
    SIGKILL.
    For the runs the killed server had created (their `Scheduled` event's writer), how late they
    were claimed after their start time; and when the survivors logged the takeover after the
    kill. The bound is `server.lease_seconds` + 2 s (the lease is `--lease`, 10 by default).

    .venv/bin/python bench/cluster.py [--burst 1000] [--timed 30] [--lease 10] [--json bench/results/cluster.json]

The database is PostgreSQL at $FLOWRELAY_BENCH_POSTGRES_URL (default
postgresql+asyncpg://postgres@127.0.0.1:5432/test: a database per configuration is created next to
it and dropped afterwards); the broker is $FLOWRELAY_TEST_AMQP_URL or amqp://guest:guest@127.0.0.1:5672/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._cluster import AMQP, FLOWRELAY, _delete_topology  # noqa: E402
from bench._cpu import _descendants, _processes  # noqa: E402

HERE = Path(__file__).resolve().parent
POSTGRES = os.environ.get("FLOWRELAY_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")

CLIENT = textwrap.dedent("""
    import asyncio, json, sys, time
    from engine import run_deployment

    burst = int(sys.argv[1])

    async def main():
        name = "bench-trivial/bench"
        for _ in range(5):  # warm up: connections, the workers' children
            await run_deployment(name, {"i": 0}, timeout=60)
        print("warm", flush=True)
        sys.stdin.readline()  # the benchmark takes its CPU snapshot
        t0 = time.perf_counter()
        done = await asyncio.gather(*(run_deployment(name, {"i": i}, timeout=900) for i in range(burst)))
        elapsed = time.perf_counter() - t0
        ok = sum(1 for r in done if r.state.name == "Completed")
        print(json.dumps({"seconds": elapsed, "completed": ok}), flush=True)
        sys.stdin.readline()  # the benchmark reads this process's CPU before it exits

    asyncio.run(main())
""")


# (b) `n` runs due 4 to 8 s from now, created one after another through any server
TIMED = textwrap.dedent("""
    import asyncio, datetime as dt, sys
    from engine.client import get_client

    async def main():
        n = int(sys.argv[1])
        client = get_client(sync=False)
        start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)
        for i in range(n):
            await client.create_flow_run("bench-trivial/bench", {"i": i},
                                         scheduled_time=start + dt.timedelta(seconds=4 * i / n))

    asyncio.run(main())
""")


def _admin(sql: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def main() -> None:
        engine = create_async_engine(POSTGRES, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    asyncio.run(main())


def _query(url: str, sql: str) -> list[tuple]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def main() -> list[tuple]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return [tuple(r) for r in (await conn.execute(text(sql))).all()]
        finally:
            await engine.dispose()

    return asyncio.run(main())


@contextlib.contextmanager
def database() -> Iterator[str]:
    name = f"flowrelay_bench_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES.rsplit("/", 1)[0] + f"/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Cluster:
    def __init__(self, db_url: str, lease: float) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="flowrelay-cluster-bench-"))
        self.pool = f"bench-{os.getpid()}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWRELAY_")}
        self.env.update({
            "FLOWRELAY_HOME": str(self.tmp),
            "FLOWRELAY_BROKER__URL": AMQP,
            "FLOWRELAY_DATABASE__URL": db_url,
            "FLOWRELAY_LOGGING__LEVEL": "INFO",
            "FLOWRELAY_LOGGING__FORMAT": "json",
            "FLOWRELAY_BROKER__PREFIX": f"frbench-{uuid.uuid4().hex[:8]}",
            "FLOWRELAY_API__ENABLED": "false",
            "FLOWRELAY_SERVER__LEASE_SECONDS": str(lease),
            "PYTHONPATH": str(HERE.parent),
        })
        self.servers: list[subprocess.Popen[bytes]] = []
        self.workers: list[subprocess.Popen[bytes]] = []

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{args[0]}-{len(self.servers) + len(self.workers)}.log", "wb")  # noqa: SIM115
        return subprocess.Popen([FLOWRELAY, *args], env=self.env, cwd=self.tmp, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([FLOWRELAY, *args], env=self.env, cwd=self.tmp, capture_output=True,
                              text=True, timeout=120)

    def start(self, servers: int, workers: int = 2, concurrency: int = 8) -> None:
        for _ in range(servers):
            self.servers.append(self.spawn("server"))
            deadline = time.monotonic() + 60
            while self.cli("flow-run", "ls", "--json").returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start; see {self.tmp}")
                time.sleep(0.3)
        self.cli("deploy", f"{HERE / 'flows.py'}:trivial", "--name", "bench", "--pool", self.pool)
        for _ in range(workers):
            self.workers.append(self.spawn("worker", "--pool", self.pool, "--concurrency", str(concurrency)))

    def cpu(self) -> dict[str, dict[int, float]]:
        """CPU seconds used so far by each process of each group, by pid (a process that exits
        between two snapshots is lost, never counted negative)."""
        procs = _processes()

        def tree(pids: list[int], *, children: bool | None = None) -> dict[int, float]:
            found: set[int] = set()
            for pid in pids:
                if children is not True:
                    found.add(pid)
                if children is not False:
                    found |= _descendants(procs, pid)
            return {p: procs[p][2] for p in found if p in procs}

        alive = [p.pid for p in self.servers if p.poll() is None]
        return {
            "servers": tree(alive),
            "workers": tree([p.pid for p in self.workers], children=False),
            "children": tree([p.pid for p in self.workers], children=True),
            "rabbitmq": {p: t for p, (c, _, t) in procs.items() if c == "beam.smp"},
            "postgres": {p: t for p, (c, _, t) in procs.items() if c.startswith("postgres")},
        }

    def stop(self) -> None:
        for proc in [*self.workers, *self.servers]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in [*self.workers, *self.servers]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        _delete_topology(self.env["FLOWRELAY_BROKER__PREFIX"], self.pool)


def throughput(c: Cluster, burst: int) -> dict[str, object]:
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(burst)], env=c.env, cwd=c.tmp,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdin is not None and client.stdout is not None
    assert client.stdout.readline().strip() == "warm"
    before, client_before = c.cpu(), _processes()[client.pid][2]
    client.stdin.write("go\n")
    client.stdin.flush()
    data = json.loads(client.stdout.readline())
    time.sleep(0.5)  # the runs' trailing work (marking events sent)
    after, client_after = c.cpu(), _processes()[client.pid][2]
    client.stdin.write("bye\n")
    client.stdin.flush()
    client.wait(timeout=60)
    usage = {
        group: round(sum(t - before[group].get(pid, 0.0) for pid, t in after[group].items()) * 1000 / burst, 2)
        for group in after
    }
    usage["client"] = round((client_after - client_before) * 1000 / burst, 2)
    usage["total"] = round(sum(usage.values()), 2)
    return {"runs": burst, "completed": data["completed"], "seconds": round(data["seconds"], 2),
            "runs_per_second": round(burst / data["seconds"], 1), "cpu_ms_per_run": usage}


def takeover(c: Cluster, timed: int, lease: float) -> dict[str, object]:
    made = subprocess.run([sys.executable, "-c", TIMED, str(timed)], env=c.env, cwd=c.tmp,
                          capture_output=True, text=True, timeout=120)
    if made.returncode != 0:
        raise RuntimeError(f"could not create the timed runs: {made.stderr[-1000:]}")
    victim = c.servers[0]
    ids = _query(c.env["FLOWRELAY_DATABASE__URL"], "select id from servers")
    victim_id = next(sid for (sid,) in ids if f"-{victim.pid}-" in sid)
    os.killpg(victim.pid, signal.SIGKILL)
    killed = time.time()
    victim.wait(timeout=10)
    deadline = time.monotonic() + 60
    rows: list[tuple] = []
    while time.monotonic() < deadline:
        rows = _query(c.env["FLOWRELAY_DATABASE__URL"], """
            select r.id, r.state_name, e.writer,
                   (select min(s.timestamp) from flow_run_states s where s.flow_run_id = r.id and s.name = 'Pending'),
                   r.expected_start_time
            from flow_runs r join events e on e.resource_id = 'flow-run/' || r.id::text
                 and e.event = 'flow-run.Scheduled'
            where r.expected_start_time > r.created + interval '2 seconds'""")
        if len(rows) >= timed and all(r[1] == "Completed" for r in rows):
            break
        time.sleep(0.5)
    theirs = [r for r in rows if r[2] == victim_id]
    late = [(r[3] - r[4]).total_seconds() for r in theirs if r[3] is not None]
    took_over = []
    for path in c.tmp.glob("server-*.log"):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == "took over" and victim_id in (entry.get("dead_servers") or []):
                    when = dt.datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
                    took_over.append(when - killed)
    return {
        "timed_runs": len(rows), "of_the_killed_server": len(theirs),
        "completed": sum(1 for r in rows if r[1] == "Completed"),
        "claimed_late_s": {"median": round(statistics.median(late), 2) if late else None,
                           "max": round(max(late), 2) if late else None},
        "takeover_after_kill_s": round(min(took_over), 2) if took_over else None,
        "bound_s": lease + 2,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--timed", type=int, default=30)
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--servers", default="1,2,3")
    parser.add_argument("--json", default=str(HERE / "results" / "cluster.json"))
    args = parser.parse_args()
    results: dict[str, dict[str, object]] = {}
    for n in (int(x) for x in args.servers.split(",")):
        with database() as db_url:
            c = Cluster(db_url, args.lease)
            try:
                c.start(n)
                entry: dict[str, object] = {"throughput": throughput(c, args.burst)}
                if n > 1:
                    entry["takeover"] = takeover(c, args.timed, args.lease)
                results[str(n)] = entry
            finally:
                c.stop()
        print(f"{n} server(s): {json.dumps(results[str(n)])}", file=sys.stderr)
    print(f"\n{'servers':<9}{'runs/s':>9}{'CPU ms/run':>12}  "
          + "".join(f"{g:>10}" for g in ("servers", "workers", "children", "rabbitmq", "postgres", "client"))
          + f"{'takeover s':>12}{'late max s':>12}")
    for n, entry in results.items():
        t = entry["throughput"]
        assert isinstance(t, dict)
        cpu = t["cpu_ms_per_run"]
        over = entry.get("takeover") or {}
        assert isinstance(over, dict)
        print(f"{n:<9}{t['runs_per_second']:>9}{cpu['total']:>12}  "
              + "".join(f"{cpu[g]:>10}" for g in ("servers", "workers", "children", "rabbitmq", "postgres", "client"))
              + f"{over.get('takeover_after_kill_s', '-')!s:>12}"
              + f"{(over.get('claimed_late_s') or {}).get('max', '-')!s:>12}")
    out = {"results": results, "lease_seconds": args.lease, "burst": args.burst,
           "machine": {"cpus": os.cpu_count()}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
