"""The server: engine service + command RPC + outbox relay + dispatch timer + scheduler
(`engine.scheduler`) + heartbeat monitor + the automations' rule engine (`automations.service`,
unless `automations.enabled: false`).

`flowrelay server` runs it against the configured database and broker. The embedded mode
(`broker.url: memory://`) runs the same object in process, without the RPC (calls go straight to
the service), with an in-process worker per pool.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from engine.broker import Broker, from_url
from engine.broker.errors import TopologyError
from engine.broker.rpc import RpcServer
from engine.broker.topology import Binding, Names, QueueSpec, Topology, build_topology
from engine.db.group_commit import RetryPolicy
from engine.db.servers import Tick
from engine.scheduler.service import SCHEDULER_COMMANDS, Scheduler
from engine.schemas import Event
from engine.server.commands import CommandTable
from engine.server.heartbeats import HeartbeatMonitor
from engine.server.leases import PARTITIONS, LeaseKeeper
from engine.server.relay import DISPATCH_PREFIX, OutboxRelay
from engine.server.timers import DispatchTimer
from engine.service import EngineService
from engine.settings import Settings
from engine.states import utcnow

if TYPE_CHECKING:
    from automations.service import AutomationsService
    from engine.api.server import ApiServer

log = structlog.get_logger("flowrelay.server")


class Server:
    def __init__(
        self,
        settings: Settings,
        *,
        broker: Broker | None = None,
        serve_rpc: bool = True,
        prefix: str | None = None,
        on_new_pool: Callable[[str], Awaitable[None]] | None = None,
        serve_api: bool = False,
        freeze_heap: bool = False,
    ) -> None:
        self.settings = settings
        self.names = Names(prefix) if prefix else Names()
        self.serve_rpc = serve_rpc
        self.on_new_pool = on_new_pool
        self.service = EngineService(
            settings.database.url,
            result_max_bytes=settings.results.max_bytes,
            parameters_max_bytes=settings.parameters.max_bytes,
            busy_timeout_ms=settings.database.busy_timeout_ms,
            conflict_retry=RetryPolicy(
                attempts=settings.database.conflict_retries,
                backoff_seconds=settings.database.conflict_backoff_ms / 1000,
            ),
            unavailable_timeout=settings.database.unavailable_timeout_seconds,
            code_bundle_dir=settings.code.bundle_dir,
            max_bundle_bytes=int(settings.code.max_bundle_mb * 1e6),
            heartbeat_timeout=settings.server.heartbeat_timeout_seconds,
        )
        #: its share of the work no request owns (`engine.server.leases`); SQLite runs one
        #: server, which takes it all at start
        self.leases = LeaseKeeper(
            self.service, lease_seconds=settings.server.lease_seconds,
            single=not settings.database.url.startswith("postgresql"),
            on_change=self._on_leases, on_tick=self._after_outage,
        )
        #: how long the broker connection had lasted at the last look (shorter now, or down
        #: then: it reconnected meanwhile); set at start, which looked for lost dispatches
        self._connected_for = 0.0
        self._own_broker = broker is None
        self.broker: Broker = broker or from_url(settings.broker.url, connection_name="flowrelay-server")
        self.pools: set[str] = set()
        self.timer = DispatchTimer(self.service, ahead=settings.server.dispatch_ahead_seconds)
        self.scheduler = Scheduler(
            self.service, broker=self.broker, names=self.names,
            late_after=settings.server.late_after_seconds,
            runs_ahead=settings.server.scheduled_runs_ahead, owns=self.leases.owns,
        )
        self.heartbeats = HeartbeatMonitor(
            self.service, timeout=settings.server.heartbeat_timeout_seconds,
            heard_for=self.broker.connected_for,
        )
        self.relay = OutboxRelay(
            self.service, self.broker, self.names, ensure_pool=self.ensure_pool,
            on_published=self._on_published,
            publish_timeout=settings.broker.publish_timeout_seconds,
        )
        self.commands = CommandTable()
        self.commands.add_service(self.service)
        self.commands.add("heartbeat", self.heartbeats.beat)
        self.commands.add("protocol", _protocol)
        self.commands.add_service(self.scheduler, SCHEDULER_COMMANDS)
        self.automations: AutomationsService | None = None
        if settings.automations.enabled:
            from automations.service import AUTOMATION_COMMANDS, AutomationsService

            self.automations = AutomationsService(
                self.service, self.broker, self.names, settings, owns_partition=self._owns_rules,
            )
            self.commands.add_service(self.automations, AUTOMATION_COMMANDS)
        self.rpc: RpcServer | None = None
        #: called with every event published (the HTTP API's stream and metrics): by this
        #: server's relay when it is the only server, else by a queue of its own that receives
        #: every event of the cluster (`_follow_events`)
        self.published_listeners: list[Callable[[Event, str], None]] = []
        self._feed: Any = None
        self.api: ApiServer | None = None
        if serve_api and settings.api.enabled:
            from engine.api.server import ApiServer

            self.api = ApiServer(self)  # ConfigError now if its settings are unsafe
        self._started = False
        #: the relay, scheduler and timer have started (lease changes before are loaded by them)
        self._started_work = False
        #: runs dispatched again because their dispatch message was gone (tests, metrics)
        self.redispatched = 0
        #: a process of its own (`flowrelay server` / `dev`): see the end of `start`
        self.freeze_heap = freeze_heap

    async def start(self) -> None:
        if self.api is not None:
            self.api.bind()  # a port in use fails here, before anything else started
        await self.service.start()
        if self._own_broker:
            await self.broker.connect()
        await self._declare_topology()
        if self.settings.deployments:
            from engine.deployments import register_configured

            await register_configured(self.service, self.settings)
        for deployment in await self.service.read_deployments():
            if deployment.work_pool:
                await self.ensure_pool(deployment.work_pool)
        if self.settings.broker.url.startswith("memory://"):
            # The in-memory broker's queues died with the last process: dispatch again what
            # was dispatched but never claimed (claims are compare-and-set, so never twice).
            await self.service.forget_dispatches()
        # Its partitions and the unsent rows of dead servers, before the relay reads its rows
        # and the scheduler and timer load theirs (a partition gained later: `_on_leases`).
        await self.leases.start()
        await self.relay.start()
        await self.scheduler.start()  # before the timer: catch-up may cancel missed runs
        await self.timer.start(self.leases.owns)
        self._started_work = True
        await self.redispatch_lost()
        self._connected_for = self.broker.connected_for()
        await self.heartbeats.start()
        if self.automations is not None:
            await self.automations.start()
        if self.serve_rpc:
            self.rpc = RpcServer(
                self.broker, self.names.commands, self.commands,
                prefetch=max(16, self.settings.broker.prefetch * 4),
            )
            await self.rpc.start()
        if self.api is not None:
            await self.api.start()
        if self.published_listeners and not self.leases.single:
            await self._follow_events()
        self._started = True
        if self.freeze_heap:
            # What start loaded (deployments, schedules, timers, rules) lives as long as the
            # process: out of the collector's way, full collections stay short (10,000
            # schedules: hundreds of ms per collection at a cron minute's hand-over).
            gc.collect()
            gc.freeze()
        log.log(20 if self.serve_rpc else 10, "server started", database=_mask(self.settings.database.url),
                 broker=_mask(self.settings.broker.url), pools=sorted(self.pools))

    async def _declare_topology(self) -> None:
        topology = build_topology(
            delivery_limit=self.settings.broker.delivery_limit, prefix=self.names.prefix
        )
        commands = [q for q in topology.queues if q.name == self.names.commands]
        rest = Topology(
            topology.exchanges,
            tuple(q for q in topology.queues if q.name != self.names.commands),
            topology.bindings,
        )
        await self.broker.declare_topology(rest)
        for spec in commands:
            try:
                await self.broker.declare_queue(spec)
            except TopologyError as exc:
                # An earlier version declared it as a quorum queue: RabbitMQ refuses to redeclare
                # it as classic. It works as it is (only slower): keep it, say how to switch.
                log.warning(
                    "keeping the existing command queue as it was declared; delete it while no "
                    "server runs to get the faster classic queue", queue=spec.name, error=str(exc),
                )

    async def stop(self) -> None:
        if self._feed is not None:
            feed, self._feed = self._feed, None
            await feed.cancel(grace=1.0)
        if self.api is not None:
            await self.api.stop()
        if self.rpc is not None:
            await self.rpc.stop()
            self.rpc = None
        if self.automations is not None:
            await self.automations.stop()
        await self.heartbeats.stop()
        await self.scheduler.stop()
        await self.timer.stop()
        await self.relay.stop()
        await self.leases.stop()  # after the relay marked what it published: the rest is adopted
        self._started_work = False
        if self._own_broker:
            await self.broker.close()
        await self.service.close()
        self._started = False

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def ensure_pool(self, pool: str) -> None:
        """Declare pool `pool`'s work queue, bound to its dispatch routing key."""
        queue = self.names.pool(pool)
        spec = QueueSpec(
            queue, quorum=True, delivery_limit=self.settings.broker.delivery_limit,
            dead_letter_exchange=self.names.dlx,
        )
        await self.broker.declare_topology(
            Topology(queues=(spec,), bindings=(Binding(queue, self.names.events, f"{DISPATCH_PREFIX}{pool}"),))
        )
        if pool not in self.pools:
            self.pools.add(pool)
            if self.on_new_pool is not None:
                await self.on_new_pool(pool)

    async def _follow_events(self) -> None:
        """Several servers: every server's API shows the whole cluster. Its stream and metrics
        are fed by an exclusive queue bound to every event (each relay publishes only its own
        rows), restored with its binding when the broker connection comes back."""
        queue = await self.broker.declare_queue(QueueSpec.temporary(prefix=f"{self.names.prefix}.api"))
        await self.broker.bind(queue, self.names.events, "#")
        self._feed = await self.broker.consume(queue, self._on_feed, auto_ack=True)

    async def _on_feed(self, message: Any) -> None:
        try:
            event = Event.model_validate_json(message.body)
        except ValueError:
            return  # not an event (the rule engine dead-letters it, not the API)
        for listener in self.published_listeners:
            listener(event, message.routing_key)

    def _owns_rules(self, partition: int) -> bool:
        """Whether this server evaluates rule partition `partition`: it owns the lease partition
        it maps to (spread evenly over the 64, so that servers' shares hold some of each)."""
        assert self.automations is not None
        return self.leases.owns_partition(partition * PARTITIONS // self.automations.partitions)

    async def _on_leases(self, tick: Tick) -> None:
        """The partitions this server owns changed, or a server died, or this one is back from
        an outage: take over what is now this server's."""
        if tick.adopted:
            self.relay.adopted()  # a dead server's unsent rows are now this server's to publish
        if not self._started_work:
            return  # start loads everything after the first tick
        # (also back from an outage: a deployment changed while its lease was not valid here
        # was let go, and is followed again now)
        self.scheduler.rebalance()
        if self.automations is not None:
            await self.automations.rebalance()
        if not tick.owned:
            return
        loaded = await self.timer.load(self.leases.owns)
        redispatched = await self.redispatch_lost()
        log.info("took over", server_id=self.service.server_id, gained=len(tick.gained),
                 dead_servers=tick.died, due_runs=loaded, redispatched=redispatched,
                 adopted_events=tick.adopted)

    async def _after_outage(self) -> None:
        """After each lease renewal: if the broker connection came back since the last look (a
        broker restart, a network cut), look for dispatches lost with it."""
        connected_for, before = self.broker.connected_for(), self._connected_for
        self._connected_for = connected_for
        if self._started_work and connected_for > 0.0 and (before == 0.0 or connected_for < before):
            log.info("broker connection is back: looking for lost dispatches")
            await self.redispatch_lost()

    async def redispatch_lost(self) -> int:
        """Dispatch again the runs of this server's partitions whose dispatch message is gone:
        dispatched more than a heartbeat timeout ago, still unclaimed, and their pool's queue is
        empty (no message left that a worker could still take). Run at start, on taking
        partitions over and after an outage, never on a timer. A run dispatched twice is
        claimed once. Returns how many were dispatched again."""
        before = utcnow() - dt.timedelta(seconds=self.settings.server.heartbeat_timeout_seconds)
        try:
            waiting = [(run_id, pool) for run_id, pool in await self.service.waiting_for_claim(before)
                       if self.leases.owns(run_id)]
            empty: dict[str, bool] = {}
            for pool in {pool for _, pool in waiting}:
                try:
                    empty[pool] = await self.broker.message_count(self.names.pool(pool)) == 0
                except TopologyError:
                    empty[pool] = True  # no queue at all: its messages are gone with it
                    await self.ensure_pool(pool)
            lost = [run_id for run_id, pool in waiting if empty[pool]]
            if not lost:
                return 0
            count = await self.service.forget_dispatches(lost, before=before)
        except Exception as exc:  # noqa: BLE001 - looked for again at the next takeover/outage
            log.warning("could not look for lost dispatches", error=f"{type(exc).__name__}: {exc}")
            return 0
        now = utcnow()
        for run_id in lost:
            self.timer.schedule(run_id, now)
        if count:
            self.redispatched += count
            log.warning("dispatching again runs whose dispatch message is gone", runs=count,
                        dispatched_before=before.isoformat())
        return count

    def _on_published(self, event: Event, routing_key: str) -> None:
        """Feed the dispatch timer with deployment runs that start in the future (and, with one
        server, the API's stream and metrics: it published every event)."""
        if self.leases.single:
            for listener in self.published_listeners:
                listener(event, routing_key)
        if not event.event.startswith("flow-run.") or not event.resource.get("deployment"):
            return
        if event.payload.get("type") != "SCHEDULED":
            return
        when = event.payload.get("scheduled_time")
        if not when:
            return
        try:
            at = dt.datetime.fromisoformat(str(when).replace("Z", "+00:00"))
        except ValueError:
            return
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.UTC)
        if at > utcnow():
            run_id = str(event.resource.get("id", "")).removeprefix("flow-run/")
            self.timer.schedule(run_id, at)

    async def serve_forever(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()


def _mask(url: str) -> str:
    from engine.settings import mask_url_passwords

    return mask_url_passwords(url)


async def _protocol() -> dict[str, int]:
    """The wire protocol this server speaks (a client checks it before it serves: `RemoteEngine.
    check_protocol`); every reply carries it too."""
    from engine.broker.rpc import PROTOCOL_VERSION

    return {"version": PROTOCOL_VERSION}

