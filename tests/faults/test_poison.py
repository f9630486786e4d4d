"""Fault 5: poison messages on a pool queue and on the automations queue are dead-lettered after a
bounded number of deliveries, counted, and the consumers keep serving the rest of their queue."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

import pytest

from engine.broker import IncomingMessage, from_url
from engine.broker.topology import Names
from tests.faults.conftest import FaultCluster, automation, publish, wait_until
from workers import declare_pool

pytestmark = pytest.mark.rabbitmq

GOOD = 10
DELIVERY_LIMIT = 5  # broker.delivery_limit of the default configuration

RULES = """
    automations:
      - name: on-tick
        trigger: {type: event, expect: [tick]}
        actions:
          - type: run-deployment
            deployment: ping/faults
            parameters: {n: "{{ event.payload.n }}"}
"""


def _tick(n: int) -> bytes:
    return json.dumps({"id": str(uuid.uuid4()), "event": "tick", "resource": {"id": "ticker/1"},
                       "occurred": "2026-11-23T10:00:00+00:00", "payload": {"n": n}}).encode()


def test_poison_on_pool_and_automations_queues_is_dead_lettered(faults: FaultCluster) -> None:
    # Given a server, a worker and a rule that runs `ping` per `tick` event
    faults.start_server()
    faults.start_worker()
    faults.deploy("ping", "faults")
    faults.apply(RULES)
    names = Names(faults.env["FLOWRELAY_BROKER__PREFIX"])
    dispatch_key = f"dispatch.{faults.pool}"
    unknown_run = json.dumps({"event": "flow-run.dispatched", "payload": {
        "flow_run_id": str(uuid.uuid4()), "entrypoint": "flows.py:ping"}}).encode()
    poison = [
        (names.events, dispatch_key, b"\x00\xff not json", {}),         # pool: undecodable
        (names.events, dispatch_key, b'{"payload": {}}', {}),          # pool: not a dispatch
        (names.events, dispatch_key, unknown_run, {}),                 # pool: no such run
        (names.events, "tick", b"{ not json", {}),                     # automations: undecodable
        (names.events, "tick", b'["not", "an", "event"]', {}),      # automations: not an object
    ]
    messages = []
    for n in range(GOOD):  # the poison among good events
        messages.append((names.events, "tick", _tick(n), {}))
        if n < len(poison):
            messages.append(poison[n])

    # When they are all published
    publish(faults.env["FLOWRELAY_BROKER__URL"], messages)

    # Then every good event ran its deployment once
    def done() -> bool:
        runs = faults.runs("ping")
        return len(runs) >= GOOD and all(r.state == "Completed" for r in runs.values())

    wait_until(done, timeout=60, what="a run per good event")
    assert sorted(int(r.parameters["n"]) for r in faults.runs("ping").values()) == list(range(GOOD))
    assert automation(faults, "on-tick")["counters"]["fired"] == GOOD

    # And the 5 poison messages are in the dead-letter queue, each after one delivery, with why
    dead: list[dict] = []
    wait_until(lambda: dead.extend(faults.dead_letters()) or len(dead) >= 5, timeout=30,
               what="5 dead letters")
    assert len(dead) == 5, [d["body"] for d in dead]
    from_pool = [d for d in dead if d["routing_key"] == dispatch_key]
    from_rules = [d for d in dead if d["routing_key"] == "tick"]
    assert len(from_pool) == 3 and len(from_rules) == 2
    for d in from_pool:
        [death] = d["headers"]["x-death"]
        assert death["reason"] == "rejected" and death["queue"] == names.pool(faults.pool)
        assert death["count"] == 1
    for d in from_rules:
        assert "not a flowrelay event" in d["headers"]["x-flowrelay-reason"]
    assert faults.log_of("server-0").count("event dead-lettered") == 2
    assert faults.log_of(f"worker-{1}").count("dead-lettering") == 3


async def test_a_handler_raising_every_time_is_dead_lettered_after_the_delivery_limit(
    amqp_url: str,
) -> None:
    """At the broker level, on the real pool topology (quorum queue, `x-delivery-limit`): a
    message whose handler raises every time is delivered `limit + 1` times, then dead-lettered
    with reason `delivery_limit`; the 30 good messages around it are each handled once."""
    names = Names(f"frfault-{uuid.uuid4().hex[:8]}")
    attempts: list[int] = []
    handled: Counter[bytes] = Counter()
    dead: list[IncomingMessage] = []
    finished = asyncio.Event()
    async with from_url(amqp_url, connection_name="flowrelay-faults-poison") as broker:
        queue = await declare_pool(broker, "p", names=names, delivery_limit=DELIVERY_LIMIT)
        try:
            async def handle(message: IncomingMessage) -> None:
                if message.body == b"poison":
                    attempts.append(message.delivery_count)
                    raise RuntimeError("poison")
                handled[message.body] += 1
                await message.ack()
                if dead and len(handled) == 30:
                    finished.set()

            async def corpse(message: IncomingMessage) -> None:
                dead.append(message)
                await message.ack()
                if len(handled) == 30:
                    finished.set()

            consumer = await broker.consume(queue, handle, prefetch=4)
            dead_consumer = await broker.consume(names.dead, corpse, prefetch=10)
            await broker.publish(names.events, "dispatch.p", b"poison")
            for i in range(30):
                await broker.publish(names.events, "dispatch.p", f"good-{i}".encode())
            async with asyncio.timeout(60):
                await finished.wait()
            await consumer.cancel()
            await dead_consumer.cancel()
        finally:
            for q in (queue, names.dead):
                await broker.delete_queue(q)
            for exchange in (names.events, names.dlx):
                await broker.delete_exchange(exchange)

    assert attempts == list(range(DELIVERY_LIMIT + 1))
    assert [d.body for d in dead] == [b"poison"] and dead[0].death_reason == "delivery_limit"
    assert set(handled.values()) == {1} and len(handled) == 30
