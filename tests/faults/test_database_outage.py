"""PostgreSQL refuses connections for 10 s while chains flow (issue 11).

The database stops accepting connections and its sessions are terminated (``ALTER DATABASE ...
ALLOW_CONNECTIONS false`` + ``pg_terminate_backend``: what an operator, a failover or a restart
does) while upstream runs are launched, claimed, run and chained to their downstream runs through
an automation. An outage is a wait, not a verdict: the server's writes wait in order and run once
the database is back, workers and flows propose again with backoff, heartbeats are answered with
a lease and nobody is judged meanwhile. What must hold once it is back: lost 0, duplicate
executions 0, stuck 0, nothing dead-lettered.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from tests.conftest import allow_connections, refuse_connections
from tests.faults.conftest import (
    FINAL,
    FaultCluster,
    check_chain,
    setup_chain,
    wait_until,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

CHAINS = 200  # the number
OUTAGE = 10.0


def test_postgres_refusing_connections_for_10_s_loses_and_repeats_nothing(pg_faults: FaultCluster) -> None:
    c = pg_faults
    dbname = c.env["FLOWRELAY_DATABASE__URL"].rsplit("/", 1)[1]
    # Given a server on PostgreSQL, two workers and the up -> down chain, chains being launched
    c.start_server()
    setup_chain(c)
    c.start_worker(concurrency=4, name="w1")
    c.start_worker(concurrency=4, name="w2")
    batches = [f"o{i:03d}" for i in range(CHAINS)]
    launcher = c.launch("up/faults", batches, pace=0.05)
    wait_until(lambda: len(c.executions("up")) >= 10, timeout=60, what="chains under way")

    # When the database refuses connections for 10 s (its sessions terminated)
    asyncio.run(refuse_connections(dbname))
    try:
        time.sleep(OUTAGE)
    finally:
        asyncio.run(allow_connections(dbname))
    assert launcher.wait(timeout=300) == 0, c.log_of("launcher")

    # Then once it is back every chain completes once: nothing lost, stuck or run twice
    def quiet() -> bool:
        runs = c.runs()
        downs = [r for r in runs.values() if r.flow == "down"]
        return len(downs) >= CHAINS and all(r.state in FINAL for r in runs.values())

    try:
        wait_until(quiet, timeout=180, interval=1.0, what="all chains final")
    finally:
        counts = check_chain(c, batches)
    assert counts == {"up": CHAINS, "up_completed": CHAINS, "down": CHAINS, "down_completed": CHAINS}
    executions = Counter((e.kind, e.extra) for e in c.executions() if e.kind in ("up", "down"))
    assert sorted(executions.values()) == [1] * (2 * CHAINS), [k for k, n in executions.items() if n > 1]
    assert not [r for r in c.runs().values() if "Crashed" in r.state_names]
    assert c.dead_letters() == []
    assert "the database is unavailable: writes wait for it" in c.log_of("server-0")
