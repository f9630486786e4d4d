"""Fault 8: slow consumer / back-pressure. Events pile up in the rule engine's durable queue
(bound because an automation exists) while the server is stopped; the server starts and drains
them, never holding more than its prefetch unacknowledged, with bounded memory and no loss: one
firing per event.

Scaled down to 5,000 events (about a minute on a 2-core machine); `bench/soak.py --backlog`
runs the issue's 50,000.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid

import pytest

from engine.broker.topology import Names
from tests.faults.conftest import (
    FaultCluster,
    automation,
    peak_rss_mb,
    publish_many,
    queue_depth,
    wait_until,
)

pytestmark = pytest.mark.rabbitmq

EVENTS = 5_000
PREFETCH = 64
#: the server's peak RSS may not exceed this (it is ~150 MB idle): a server that took the whole
#: backlog into memory would not be caught by this alone, hence the unacked bound as well
MAX_RSS_MB = 600

RULES = """
    automations:
      - name: count-ticks
        trigger: {type: event, expect: [bp.tick]}
        actions:
          - {type: emit-event, event: bp.seen}
"""


def test_backlog_drains_within_prefetch_without_loss(faults: FaultCluster) -> None:
    # Given the rule applied, then the server stopped
    faults.env["FLOWRELAY_AUTOMATIONS__PREFETCH"] = str(PREFETCH)
    server = faults.start_server()
    faults.apply(RULES)
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)
    names = Names(faults.env["FLOWRELAY_BROKER__PREFIX"])
    queue = names.subscription("automations")

    # When 5,000 events are published meanwhile
    bodies = [json.dumps({"id": str(uuid.uuid4()), "event": "bp.tick", "resource": {"id": "bp/1"},
                          "payload": {"n": n}}).encode() for n in range(EVENTS)]
    publish_many(faults.env["FLOWRELAY_BROKER__URL"], names.events, "bp.tick", bodies)
    # (RabbitMQ's queue statistics lag a few seconds behind)
    wait_until(lambda: queue_depth(queue) == (EVENTS, 0), timeout=30, interval=1.0,
               what=f"{EVENTS} messages waiting")

    # And the server starts again
    server = faults.start_server()
    max_unacked = 0
    rss = 0.0
    done = threading.Event()

    def watch() -> None:
        nonlocal max_unacked, rss
        while not done.is_set():
            depth = queue_depth(queue)
            if depth:
                max_unacked = max(max_unacked, depth[1])
            rss = max(rss, peak_rss_mb(server.pid))
            done.wait(0.3)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # Then it drains the backlog: one firing per event
        wait_until(lambda: automation(faults, "count-ticks")["counters"]["fired"] >= EVENTS,
                   timeout=240, interval=2.0, what="a firing per event")
        wait_until(lambda: queue_depth(queue) == (0, 0), timeout=30, what="an empty queue")
    finally:
        done.set()
        watcher.join()
    counters = automation(faults, "count-ticks")["counters"]
    assert counters["fired"] == EVENTS and counters["matched"] == EVENTS
    assert 0 < max_unacked <= PREFETCH
    assert rss < MAX_RSS_MB
    print(f"fault 8: {EVENTS} events drained, max unacked {max_unacked}, peak RSS {rss:.0f} MB")
