"""The Broker contract: every implementation (memory, RabbitMQ) must pass all of it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine.broker import (
    Broker,
    BrokerUnavailable,
    IncomingMessage,
    MessageAlreadySettled,
    Names,
    PublishTimeout,
    QueueSpec,
    RpcClient,
    RpcError,
    RpcServer,
    RpcTimeout,
    Topology,
    TopologyError,
    Unroutable,
    from_url,
)
from engine.broker.memory import MemoryBroker, topic_matches
from engine.broker.rabbitmq import RabbitMQBroker, mask_url
from engine.broker.rpc import PROTOCOL_VERSION
from engine.errors import ObjectNotFound
from tests.contract.conftest import Connector

WAIT = 10.0  # upper bound for anything that should happen "at once"
QUIET = 0.3  # how long "nothing more arrives" is watched


class Inbox:
    """Collects deliveries; acks them unless told not to."""

    def __init__(self, *, ack: bool = True) -> None:
        self.ack = ack
        self.messages: list[IncomingMessage] = []
        self._changed = asyncio.Event()

    async def __call__(self, message: IncomingMessage) -> None:
        self.messages.append(message)
        if self.ack:
            await message.ack()
        self._changed.set()

    @property
    def bodies(self) -> list[bytes]:
        return [m.body for m in self.messages]

    async def wait_for(self, count: int, within: float = WAIT) -> list[IncomingMessage]:
        async with asyncio.timeout(within):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.messages


async def tail(broker: Broker, names: Names, *patterns: str, ack: bool = True) -> Inbox:
    """A private queue bound to the events exchange, with an Inbox consuming it."""
    queue = await broker.declare_queue(QueueSpec.temporary(f"{names.prefix}.tail"))
    for pattern in patterns:
        await broker.bind(queue, names.events, pattern)
    inbox = Inbox(ack=ack)
    await broker.consume(queue, inbox, prefetch=100)
    return inbox


async def publish_work(broker: Broker, queue: str, *bodies: bytes, **kwargs: Any) -> None:
    for body in bodies:
        await broker.publish("", queue, body, **kwargs)


# -- routing ---------------------------------------------------------------------------------


async def test_topic_routing_with_star_and_hash(broker: Broker, names: Names) -> None:
    # Given queues bound with `*` and `#` patterns
    completed = await tail(broker, names, "flow-run.*.Completed")
    flow_runs = await tail(broker, names, "flow-run.#")
    everything = await tail(broker, names, "#")

    # When events are published
    keys = [
        "flow-run.r1.Completed",
        "flow-run.r1.Failed",
        "task-run.t1.Completed",
        "flow-run.r1.sub.Completed",
        "flow-run",
    ]
    for key in keys:
        await broker.publish(names.events, key, key.encode())

    # Then each queue gets exactly the matching ones
    await everything.wait_for(len(keys))
    await asyncio.sleep(QUIET)
    assert everything.bodies == [k.encode() for k in keys]
    assert completed.bodies == [b"flow-run.r1.Completed"]
    assert flow_runs.bodies == [
        b"flow-run.r1.Completed",
        b"flow-run.r1.Failed",
        b"flow-run.r1.sub.Completed",
        b"flow-run",
    ]
    assert {m.routing_key for m in everything.messages} == set(keys)
    assert all(m.exchange == names.events for m in everything.messages)


async def test_message_properties_round_trip(broker: Broker, names: Names, work_queue: str) -> None:
    inbox = Inbox()
    await broker.consume(work_queue, inbox)
    await publish_work(
        broker,
        work_queue,
        b'{"a": 1}',
        headers={"x-trace": "t-1", "n": 3, "tags": ["etl"]},
        message_id="m-1",
        correlation_id="c-1",
        reply_to="somewhere",
    )
    [message] = await inbox.wait_for(1)
    assert message.json() == {"a": 1}
    assert message.headers["x-trace"] == "t-1"
    assert message.headers["n"] == 3
    assert message.headers["tags"] == ["etl"]
    assert (message.message_id, message.correlation_id, message.reply_to) == (
        "m-1",
        "c-1",
        "somewhere",
    )
    assert message.content_type == "application/json"
    assert message.routing_key == work_queue
    assert (message.redelivered, message.delivery_count) == (False, 0)


async def test_mandatory_unroutable_raises(broker: Broker, names: Names, work_queue: str) -> None:
    # The subscription queue of the topology takes "#": use a fresh exchange with no binding.
    lonely = f"{names.prefix}.lonely"
    await broker.declare_exchange(lonely, "topic")
    try:
        with pytest.raises(Unroutable) as raised:
            await broker.publish(lonely, "flow-run.x.Completed", b"{}")
        assert raised.value.routing_key == "flow-run.x.Completed"
        await broker.publish(lonely, "flow-run.x.Completed", b"{}", mandatory=False)
        with pytest.raises(Unroutable):
            await broker.publish("", f"{names.prefix}.no-such-queue", b"{}")
    finally:
        await broker.delete_exchange(lonely)
    # and the broker keeps publishing
    inbox = Inbox()
    await broker.consume(work_queue, inbox)
    await publish_work(broker, work_queue, b"after")
    assert (await inbox.wait_for(1))[0].body == b"after"


async def test_publish_to_missing_exchange_is_a_topology_error(
    broker: Broker, names: Names, work_queue: str
) -> None:
    with pytest.raises(TopologyError):
        await broker.publish(f"{names.prefix}.missing", "k", b"{}")
    inbox = Inbox()
    await broker.consume(work_queue, inbox)
    await publish_work(broker, work_queue, b"still works")
    assert (await inbox.wait_for(1))[0].body == b"still works"


async def test_unconfirmed_publish_is_delivered_and_never_unroutable(
    broker: Broker, names: Names, work_queue: str
) -> None:
    # Given a consumer on a queue
    inbox = Inbox()
    await broker.consume(work_queue, inbox)

    # When messages are published without waiting for confirms, one of them to nowhere
    await broker.publish("", f"{names.prefix}.nobody-listens", b"lost", confirm=False)
    await publish_work(broker, work_queue, b"one", b"two", confirm=False, persistent=False)

    # Then the routable ones arrive in order, and the unroutable one was dropped quietly
    assert [m.body for m in await inbox.wait_for(2)] == [b"one", b"two"]


async def test_auto_acked_deliveries_are_gone_once_delivered(
    broker: Broker, names: Names
) -> None:
    # Given a temporary queue consumed with auto_ack by a handler that never settles
    queue = await broker.declare_queue(QueueSpec.temporary(f"{names.prefix}.auto"))
    inbox = Inbox(ack=False)
    consumer = await broker.consume(queue, inbox, prefetch=1, auto_ack=True)

    # When more messages than the prefetch arrive
    await publish_work(broker, queue, b"a", b"b", b"c")

    # Then all are delivered although none was settled (no prefetch limit), and settling one
    # afterwards is harmless
    assert [m.body for m in await inbox.wait_for(3)] == [b"a", b"b", b"c"]
    await inbox.messages[0].ack()
    await consumer.cancel(grace=1.0)


async def test_redeclaring_with_other_arguments_is_refused(
    broker: Broker, names: Names, work_queue: str, delivery_limit: int
) -> None:
    await broker.declare_queue(
        QueueSpec(
            work_queue,
            quorum=True,
            delivery_limit=delivery_limit,
            dead_letter_exchange=names.dlx,
        )
    )
    with pytest.raises(TopologyError):
        await broker.declare_queue(QueueSpec(work_queue, quorum=True, delivery_limit=9))
    with pytest.raises(TopologyError):
        await broker.consume(f"{names.prefix}.never-declared", Inbox())
    await publish_work(broker, work_queue, b"fine")  # the broker is still usable


# -- acknowledgements -----------------------------------------------------------------------


async def test_ack_removes_the_message(broker: Broker, names: Names, work_queue: str) -> None:
    inbox = Inbox()
    consumer = await broker.consume(work_queue, inbox)
    await publish_work(broker, work_queue, b"once")
    await inbox.wait_for(1)
    await consumer.cancel()

    again = Inbox()
    await broker.consume(work_queue, again)
    await asyncio.sleep(QUIET)
    assert again.messages == []
    assert await broker.purge(work_queue) == 0


async def test_settling_twice_is_an_error(broker: Broker, names: Names, work_queue: str) -> None:
    inbox = Inbox()
    await broker.consume(work_queue, inbox)
    await publish_work(broker, work_queue, b"x")
    [message] = await inbox.wait_for(1)
    with pytest.raises(MessageAlreadySettled):
        await message.ack()


async def test_nack_requeue_redelivers_with_flag(
    broker: Broker, names: Names, work_queue: str
) -> None:
    inbox = Inbox(ack=False)
    await broker.consume(work_queue, inbox)
    await publish_work(broker, work_queue, b"retry me")
    first = (await inbox.wait_for(1))[0]
    assert (first.redelivered, first.delivery_count) == (False, 0)

    await first.nack(requeue=True)

    second = (await inbox.wait_for(2))[1]
    assert second.body == b"retry me"
    assert (second.redelivered, second.delivery_count) == (True, 1)
    await second.ack()


async def test_handler_error_requeues_instead_of_dropping(
    broker: Broker, names: Names, work_queue: str
) -> None:
    seen: list[IncomingMessage] = []
    done = asyncio.Event()

    async def flaky(message: IncomingMessage) -> None:
        seen.append(message)
        if len(seen) == 1:
            raise RuntimeError("database blipped")
        await message.ack()
        done.set()

    await broker.consume(work_queue, flaky)
    await publish_work(broker, work_queue, b"work")
    await asyncio.wait_for(done.wait(), WAIT)
    assert [m.redelivered for m in seen] == [False, True]


async def test_cancelled_consumer_returns_unacked_to_another(
    broker: Broker, names: Names, work_queue: str
) -> None:
    # Given a consumer holding two unacked deliveries
    holder = Inbox(ack=False)
    consumer = await broker.consume(work_queue, holder, prefetch=10)
    await publish_work(broker, work_queue, b"a", b"b")
    await holder.wait_for(2)

    # When it is cancelled
    await consumer.cancel()
    await holder.messages[0].ack()  # too late: ignored, the message went back

    # Then another consumer gets both, flagged as redelivered
    taker = Inbox()
    await broker.consume(work_queue, taker)
    await taker.wait_for(2)
    assert sorted(taker.bodies) == [b"a", b"b"]
    assert all(m.redelivered for m in taker.messages)
    await asyncio.sleep(QUIET)
    assert len(taker.messages) == 2


async def test_single_active_consumer_gets_everything_until_it_leaves(
    broker: Broker, names: Names
) -> None:
    # Given a single-active-consumer queue with two consumers (an active/passive pair)
    spec = QueueSpec(names.subscription("sac"), quorum=True, delivery_limit=5,
                     single_active_consumer=True)
    queue = await broker.declare_queue(spec)
    try:
        first, second = Inbox(), Inbox()
        active = await broker.consume(queue, first, prefetch=10)
        await broker.consume(queue, second, prefetch=10)
        # When messages arrive, only the first consumer gets them, in order
        for body in (b"1", b"2", b"3"):
            await broker.publish("", queue, body)
        await first.wait_for(3)
        await asyncio.sleep(QUIET)
        assert first.bodies == [b"1", b"2", b"3"] and second.bodies == []
        # Then when it goes away, the second takes over
        await active.cancel()
        await broker.publish("", queue, b"4")
        await second.wait_for(1)
        assert second.bodies == [b"4"]
    finally:
        await broker.delete_queue(queue)


async def test_closed_connection_returns_unacked_to_another(
    broker: Broker, names: Names, connect_another: Callable[[], Awaitable[Broker]], work_queue: str
) -> None:
    # Given another connection (another worker) holding a delivery unacked
    other = await connect_another()
    holder = Inbox(ack=False)
    await other.consume(work_queue, holder)
    await publish_work(broker, work_queue, b"job")
    await holder.wait_for(1)

    # and a second worker waiting
    taker = Inbox()
    await broker.consume(work_queue, taker)
    await asyncio.sleep(QUIET)
    assert taker.messages == []

    # When the first worker's connection closes
    await other.close()

    # Then the second worker gets the job, redelivered
    [message] = await taker.wait_for(1)
    assert (message.body, message.redelivered) == (b"job", True)


async def test_prefetch_limits_unacked_deliveries(
    broker: Broker, names: Names, work_queue: str
) -> None:
    inbox = Inbox(ack=False)
    await broker.consume(work_queue, inbox, prefetch=2)
    await publish_work(broker, work_queue, *[str(i).encode() for i in range(5)])

    await inbox.wait_for(2)
    await asyncio.sleep(QUIET)
    assert len(inbox.messages) == 2

    await inbox.messages[0].ack()
    await inbox.wait_for(3)
    await asyncio.sleep(QUIET)
    assert len(inbox.messages) == 3

    for message in inbox.messages[1:]:
        await message.ack()
    await inbox.wait_for(5)
    for message in inbox.messages[3:]:
        await message.ack()
    assert inbox.bodies == [b"0", b"1", b"2", b"3", b"4"]


# -- dead-lettering -------------------------------------------------------------------------


async def test_rejected_message_is_dead_lettered_with_reason(
    broker: Broker, names: Names, work_queue: str
) -> None:
    dead = Inbox()
    await broker.consume(names.dead, dead)
    worker = Inbox(ack=False)
    await broker.consume(work_queue, worker)
    await publish_work(broker, work_queue, b"poison", headers={"x-trace": "t-9"}, message_id="m-9")

    [message] = await worker.wait_for(1)
    await message.reject()

    [corpse] = await dead.wait_for(1)
    assert corpse.body == b"poison"
    assert corpse.message_id == "m-9"
    assert corpse.headers["x-trace"] == "t-9"
    assert corpse.death_reason == "rejected"
    assert corpse.headers["x-first-death-reason"] == "rejected"
    assert corpse.headers["x-first-death-queue"] == work_queue
    death = corpse.headers["x-death"][0]
    assert (death["queue"], death["count"], death["routing-keys"]) == (
        work_queue,
        1,
        [work_queue],
    )
    assert corpse.exchange == names.dlx
    assert corpse.routing_key == work_queue


async def test_message_count_is_what_waits_in_the_queue(
    broker: Broker, names: Names, work_queue: str
) -> None:
    assert await broker.message_count(work_queue) == 0
    for body in (b"a", b"b", b"c"):
        await publish_work(broker, work_queue, body)
    assert await broker.message_count(work_queue) == 3
    assert await broker.purge(work_queue) == 3
    assert await broker.message_count(work_queue) == 0
    with pytest.raises(TopologyError, match="no-such-queue"):
        await broker.message_count(f"{names.prefix}.no-such-queue")


async def test_nack_without_requeue_dead_letters(
    broker: Broker, names: Names, work_queue: str
) -> None:
    dead = Inbox()
    await broker.consume(names.dead, dead)
    worker = Inbox(ack=False)
    await broker.consume(work_queue, worker)
    await publish_work(broker, work_queue, b"no")
    [message] = await worker.wait_for(1)
    await message.nack(requeue=False)
    [corpse] = await dead.wait_for(1)
    assert corpse.death_reason == "rejected"


async def test_delivery_limit_dead_letters_a_poison_message(
    broker: Broker, names: Names, work_queue: str, delivery_limit: int
) -> None:
    dead = Inbox()
    await broker.consume(names.dead, dead)

    async def always_fails(message: IncomingMessage) -> None:
        attempts.append(message.delivery_count)
        await message.nack(requeue=True)

    attempts: list[int] = []
    await broker.consume(work_queue, always_fails)
    await publish_work(broker, work_queue, b"poison")

    [corpse] = await dead.wait_for(1)
    # delivery_limit=N allows N redeliveries: N + 1 deliveries in all
    assert attempts == list(range(delivery_limit + 1))
    assert corpse.death_reason == "delivery_limit"
    assert corpse.headers["x-death"][0]["queue"] == work_queue
    assert (corpse.redelivered, corpse.delivery_count) == (False, 0)


# -- RPC ------------------------------------------------------------------------------------


async def echo_handler(method: str, params: dict[str, Any]) -> dict[str, Any]:
    if method == "echo":
        return {"echo": params}
    if method == "missing":
        raise ObjectNotFound(f"flow run {params.get('id')!r} not found")
    if method == "slow":
        await asyncio.sleep(1)
        return {}
    raise ValueError(f"unknown method {method!r}")


def test_command_queue_is_classic_durable_and_dead_letters(topology: Topology, names: Names) -> None:
    # RPC requests are answered or time out, and are never requeued: no delivery count needed
    [spec] = [q for q in topology.queues if q.name == names.commands]
    assert spec.durable and not spec.quorum and not spec.exclusive and not spec.auto_delete
    assert spec.arguments() == {"x-dead-letter-exchange": names.dlx}
    # work and subscriber queues stay quorum queues with a delivery limit
    others = [q for q in topology.queues if q.name not in (names.commands, names.dead)]
    assert others and all(q.quorum and q.delivery_limit is not None for q in others)


async def test_rpc_round_trip_and_error_reply(broker: Broker, names: Names) -> None:
    async with (
        RpcServer(broker, names.commands, echo_handler),
        RpcClient(broker, names.commands, timeout=WAIT) as client,
    ):
        assert await client.call("echo", {"x": [1, "two"]}) == {"echo": {"x": [1, "two"]}}
        results = await asyncio.gather(*(client.call("echo", {"i": i}) for i in range(20)))
        assert results == [{"echo": {"i": i}} for i in range(20)]

        with pytest.raises(RpcError) as raised:
            await client.call("missing", {"id": "r-1"})
        assert raised.value.type == "ObjectNotFound"
        assert "r-1" in raised.value.message

        with pytest.raises(RpcError, match="unknown method"):
            await client.call("nope")


async def test_rpc_timeout_is_bounded(broker: Broker, names: Names) -> None:
    async with RpcClient(broker, names.commands) as client:
        # nobody serves the queue
        with pytest.raises(RpcTimeout):
            await client.call("echo", timeout=0.3)
        assert isinstance(RpcTimeout("x"), TimeoutError)
        async with RpcServer(broker, names.commands, echo_handler):
            # the stale request above is answered first; its late reply is dropped
            with pytest.raises(TimeoutError):
                await client.call("slow", timeout=0.3)
            assert await client.call("echo", {"ok": True}, timeout=WAIT) == {"echo": {"ok": True}}


async def test_rpc_of_another_protocol_version_is_refused_both_ways(broker: Broker, names: Names) -> None:
    replies = Inbox()
    reply_queue = await broker.declare_queue(QueueSpec.temporary(f"{names.prefix}.raw"))
    await broker.consume(reply_queue, replies)
    async with RpcServer(broker, names.commands, echo_handler):
        # a request of another version (none: an unversioned, older client) is not run
        for version in (None, PROTOCOL_VERSION + 1):
            body = {"method": "echo", "params": {}} | ({"v": version} if version else {})
            await broker.publish("", names.commands, json.dumps(body).encode(), reply_to=reply_queue,
                                 correlation_id=str(version))
        await replies.wait_for(2)
        for reply, version in zip(replies.messages, (1, PROTOCOL_VERSION + 1), strict=True):
            error = reply.json()["error"]
            assert error["type"] == "ProtocolMismatch"
            assert f"the caller speaks flowrelay protocol {version}, this side {PROTOCOL_VERSION}" in error["message"]

    # a server of another version (its replies carry none): the call fails naming both
    async def old_server(message: IncomingMessage) -> None:
        await broker.publish("", message.reply_to or "", b'{"result": {"echo": {}}}',
                             correlation_id=message.correlation_id, persistent=False, confirm=False)
        await message.ack()

    await broker.consume(names.commands, old_server)
    async with RpcClient(broker, names.commands, timeout=WAIT) as client:
        with pytest.raises(RpcError) as raised:
            await client.call("echo")
    assert raised.value.type == "ProtocolMismatch"
    assert f"speaks flowrelay protocol 1, this side {PROTOCOL_VERSION}" in raised.value.message


async def test_rpc_malformed_requests_do_not_kill_the_server(broker: Broker, names: Names) -> None:
    dead = Inbox()
    await broker.consume(names.dead, dead)
    replies = Inbox()
    reply_queue = await broker.declare_queue(QueueSpec.temporary(f"{names.prefix}.raw"))
    await broker.consume(reply_queue, replies)

    async with (
        RpcServer(broker, names.commands, echo_handler),
        RpcClient(broker, names.commands, timeout=WAIT) as client,
    ):
        # not JSON / no method, with somewhere to answer: an error reply
        for body in (
            b"\xff not json",
            b"[1, 2]",
            b'{"params": {}}',
            b'{"method": "echo", "params": 3}',
        ):
            await broker.publish(
                "", names.commands, body, reply_to=reply_queue, correlation_id="bad"
            )
        await replies.wait_for(4)
        for reply in replies.messages:
            assert reply.correlation_id == "bad"
            assert reply.json()["error"]["type"] == "BadRequest"

        # nowhere to answer: dead-lettered for inspection
        await broker.publish("", names.commands, b"{}")
        [corpse] = await dead.wait_for(1)
        assert corpse.death_reason == "rejected"

        # and the server still serves
        assert await client.call("echo", {"still": "alive"}) == {"echo": {"still": "alive"}}


# -- RabbitMQ only: recovery ----------------------------------------------------------------


def _rabbitmqctl(*args: str) -> str:
    if shutil.which("rabbitmqctl") is None:
        message = "rabbitmqctl is not on PATH"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=True
    ).stdout


def _connection_pids(connection_name: str) -> list[str]:
    listing = _rabbitmqctl(
        "list_connections", "pid", "client_properties", "-q", "--no-table-headers"
    )
    return [
        line.split("\t", 1)[0]
        for line in listing.splitlines()
        if f'{{"connection_name","{connection_name}"}}' in line
    ]


def _close_connection(connection_name: str) -> list[str]:
    """Close one connection by its client-provided name: other test runs keep theirs."""
    pids = _connection_pids(connection_name)
    assert pids, f"no RabbitMQ connection named {connection_name!r}"
    for pid in pids:
        _rabbitmqctl("close_connection", pid, "test")
    return pids


@pytest.mark.rabbitmq
@pytest.mark.parametrize("broker_kind", ["rabbitmq"])
async def test_consumer_resumes_after_connection_is_closed(
    broker: Broker, names: Names, connect_another: Callable[[], Awaitable[Broker]], work_queue: str
) -> None:
    # Given a consumer, an RPC server and an RPC client (exclusive reply queue) on one connection
    assert isinstance(broker, RabbitMQBroker)
    inbox = Inbox(ack=False)
    await broker.consume(work_queue, inbox)
    rpc_server = RpcServer(broker, names.commands, echo_handler)
    await rpc_server.start()
    rpc_client = RpcClient(broker, names.commands, timeout=WAIT)
    await rpc_client.start()
    assert await rpc_client.call("echo", {"n": 0}) == {"echo": {"n": 0}}
    await publish_work(broker, work_queue, b"before")
    await inbox.wait_for(1)

    # When RabbitMQ closes that connection
    name = f"{names.prefix}-0"
    closed = await asyncio.to_thread(_close_connection, name)

    # Then publishing works again once aio-pika has reconnected (bounded)...
    async with asyncio.timeout(30):
        while True:
            try:
                await publish_work(broker, work_queue, b"after", timeout=2)
                break
            except (BrokerUnavailable, PublishTimeout):
                await asyncio.sleep(0.5)
        # ...and the consumer resumed: it gets the message published after the reconnect, and
        # the one it held unacked comes back, redelivered
        stale = inbox.messages[0]
        await stale.ack()  # its channel is gone: logged, not raised
        await inbox.wait_for(3, within=30)
    redelivered = {m.body: m.redelivered for m in inbox.messages[1:]}
    assert redelivered == {b"before": True, b"after": False}
    for message in inbox.messages[1:]:
        await message.ack()
    reopened = await asyncio.to_thread(_connection_pids, name)
    assert reopened and not set(reopened) & set(closed), "aio-pika did not open a new connection"

    # and RPC works again both ways: the reply queue (exclusive, so deleted with the old
    # connection) was declared again, and the server serves a client on another connection
    async with asyncio.timeout(30):
        while True:
            try:
                assert await rpc_client.call("echo", {"n": 1}, timeout=2) == {"echo": {"n": 1}}
                break
            except RpcTimeout:
                await asyncio.sleep(0.5)
    other = await connect_another()
    async with RpcClient(other, names.commands, timeout=WAIT) as client:
        assert await client.call("echo", {"n": 2}) == {"echo": {"n": 2}}
    await rpc_client.close()
    await rpc_server.stop()


# -- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("flow-run.*.Completed", "flow-run.r1.Completed", True),
        ("flow-run.*.Completed", "flow-run.r1.x.Completed", False),
        ("flow-run.#", "flow-run", True),
        ("flow-run.#", "flow-run.a.b", True),
        ("#", "anything.at.all", True),
        ("#.Completed", "flow-run.r1.Completed", True),
        ("*.Completed", "Completed", False),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b.c", False),
    ],
)
def test_topic_matches(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


def test_from_url() -> None:
    assert isinstance(from_url("memory://"), MemoryBroker)
    assert isinstance(from_url("amqps://u:p@host/vhost"), RabbitMQBroker)
    with pytest.raises(ValueError, match="unsupported"):
        from_url("redis://localhost")
    assert mask_url("amqp://user:s3cret-sentinel@host/") == "amqp://user:***@host/"
    assert "s3cret-sentinel" not in repr(from_url("amqp://user:s3cret-sentinel@host/"))


async def test_named_memory_nodes_are_shared() -> None:
    a, b = from_url("memory://embedded"), from_url("memory://embedded")
    async with a, b:
        await a.declare_queue(QueueSpec("q", durable=False))
        inbox = Inbox()
        await b.consume("q", inbox)
        await a.publish("", "q", json.dumps({"x": 1}).encode())
        assert (await inbox.wait_for(1))[0].json() == {"x": 1}


async def test_unreachable_rabbitmq_is_broker_unavailable() -> None:
    broker = from_url("amqp://guest:s3cret-sentinel@127.0.0.1:1/")
    with pytest.raises(BrokerUnavailable) as raised:
        await broker.connect()
    assert "127.0.0.1:1" in str(raised.value)
    assert "s3cret-sentinel" not in str(raised.value)
    with pytest.raises(BrokerUnavailable):
        await broker.publish("", "q", b"{}")


# -- connection ------------------------------------------------------------------------------


async def test_connected_for_counts_from_connect_and_is_zero_once_closed(
    connect_another: Connector,
) -> None:
    # Given a fresh connection
    other = await connect_another()
    first = other.connected_for()
    await asyncio.sleep(0.05)

    # Then it counts the time since it connected, and nothing once closed
    assert 0.0 <= first < 5.0
    assert other.connected_for() >= first + 0.04
    await other.close()
    assert other.connected_for() == 0.0


async def test_publish_many_gives_each_message_its_own_outcome(
    broker: Broker, names: Names, work_queue: str
) -> None:
    # Given a queue bound to one routing key of a fresh exchange
    exchange = f"{names.prefix}.many"
    await broker.declare_exchange(exchange, "topic")
    await broker.bind(work_queue, exchange, "dispatch.a")
    inbox = Inbox()
    await broker.consume(work_queue, inbox)
    try:
        # When a batch mixes routable, unroutable-mandatory and unroutable-optional messages
        outcomes = await broker.publish_many(exchange, [
            ("dispatch.a", b"1", "m1", True),
            ("dispatch.b", b"2", "m2", True),
            ("dispatch.a", b"3", "m3", True),
            ("other", b"4", "m4", False),
        ])
        # Then each has its outcome, in order, and the routable ones arrive in order
        assert [type(outcome).__name__ for outcome in outcomes] == [
            "NoneType", "Unroutable", "NoneType", "NoneType"]
        got = await inbox.wait_for(2)
        assert [m.body for m in got] == [b"1", b"3"] and [m.message_id for m in got] == ["m1", "m3"]
    finally:
        await broker.delete_exchange(exchange)
