"""``GET /metrics``: the server's figures in Prometheus text format.

Three sources, each where the figure already lives:

- the events this server's relay publishes (`Metrics.observe`, fed by its ``on_published``
  callback, in memory): events out by kind, dispatch latency (work handed to a pool → the run
  Running) and event-to-action latency (the event that completed a trigger → the action done);
- the database, read at scrape (`engine.api.queries.snapshot`): runs by state, the outbox's
  backlog and total, workers and the age of their last heartbeat;
- the rule engine's own counters (per automation: matched, fired, expired, failed, errors; the
  events it evaluated, the messages it dead-lettered) and the API's (events received, rejected,
  stream clients).

Each `Metrics` has its own registry, so several servers in one process (tests) do not clash.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.api.queries import Snapshot
from engine.schemas import Event
from engine.states import utcnow

if TYPE_CHECKING:
    from automations.service import AutomationsService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Event kinds counted by name (the first part of the event name); others count as "custom".
KINDS = ("flow-run", "task-run", "deployment", "automation", "worker")
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
#: How many pending dispatches / recent events / firings are remembered for the latencies.
REMEMBER = 20_000


def kind_of(event_name: str) -> str:
    head = event_name.split(".", 1)[0]
    return head if head in KINDS else "custom"


class _Bounded(OrderedDict[str, Any]):
    def remember(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > REMEMBER:
            self.popitem(last=False)


def _seconds(later: dt.datetime, earlier: dt.datetime) -> float:
    return max(0.0, (later - earlier).total_seconds())


def _run_id(event: Event) -> str:
    return str(event.resource.get("id", "")).removeprefix("flow-run/")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.published = Counter(
            "flowrelay_events_published", "Events published, by kind (by every server of the "
            "cluster: each server's API follows them all)",
            ["kind"], registry=self.registry,
        )
        self.dispatched = Counter(
            "flowrelay_runs_dispatched", "Runs handed to a work pool's queue", ["pool"],
            registry=self.registry,
        )
        self.received = Counter(
            "flowrelay_api_events_received", "Events accepted by POST /api/events",
            registry=self.registry,
        )
        self.rejected = Counter(
            "flowrelay_api_events_rejected", "POST /api/events requests refused, by status code",
            ["status"], registry=self.registry,
        )
        self.dispatch_latency = Histogram(
            "flowrelay_dispatch_latency_seconds",
            "From a run handed to its pool to the run Running on a worker",
            ["pool"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.action_latency = Histogram(
            "flowrelay_event_to_action_latency_seconds",
            "From the event that fired an automation to its action done",
            ["action", "outcome"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self._pending_dispatch = _Bounded()  # run id → (dispatched at, pool)
        self._occurred = _Bounded()  # event id → when it occurred
        self._firing_origin = _Bounded()  # firing id → when its triggering event occurred
        self.collector = _ScrapeCollector()
        self.registry.register(self.collector)

    # --- fed by the relay ---------------------------------------------------------------------
    def observe(self, event: Event, routing_key: str) -> None:
        """Count a published event and advance the latency bookkeeping. Never raises."""
        if routing_key.startswith("dispatch."):
            pool = routing_key.removeprefix("dispatch.")
            self.dispatched.labels(pool).inc()
            self._pending_dispatch.remember(_run_id(event), (event.occurred, pool))
            return
        self.published.labels(kind_of(event.event)).inc()
        self._occurred.remember(str(event.id), event.occurred)
        name = event.event
        if name.startswith("flow-run."):
            self._on_run_state(event)
        elif name == "automation.triggered":
            self._on_triggered(event)
        elif name in ("automation.action.executed", "automation.action.failed"):
            self._on_action(event)

    def _on_run_state(self, event: Event) -> None:
        state_type = event.payload.get("type")
        if state_type == "RUNNING":
            pending = self._pending_dispatch.pop(_run_id(event), None)
            if pending is not None:
                at, pool = pending
                self.dispatch_latency.labels(pool).observe(_seconds(event.occurred, at))
        elif state_type in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            self._pending_dispatch.pop(_run_id(event), None)

    def _on_triggered(self, event: Event) -> None:
        firing_id = event.payload.get("firing_id")
        causes = [
            self._occurred.get(str(item.get("event_id")))
            for item in event.related
            if item.get("role") == "triggering-event"
        ]
        known = [c for c in causes if c is not None]
        if firing_id and known:  # proactive firings have no event to measure from
            self._firing_origin.remember(str(firing_id), max(known))

    def _on_action(self, event: Event) -> None:
        origin = self._firing_origin.get(str(event.payload.get("firing_id")))
        if origin is None:
            return
        outcome = "executed" if event.event.endswith("executed") else "failed"
        action = str(event.payload.get("type") or "unknown")
        self.action_latency.labels(action, outcome).observe(_seconds(event.occurred, origin))

    # --- scrape ---------------------------------------------------------------------------------
    def render(
        self,
        snapshot: Snapshot,
        automations: list[dict[str, Any]] | None,
        rule_engine: AutomationsService | None,
        stream_clients: int,
        stream_dropped: int,
    ) -> bytes:
        self.collector.set(snapshot, automations, rule_engine, stream_clients, stream_dropped)
        return generate_latest(self.registry)


class _ScrapeCollector(Collector):
    """Figures read at scrape time (set just before `generate_latest`)."""

    def __init__(self) -> None:
        self._snapshot = Snapshot()
        self._automations: list[dict[str, Any]] | None = None
        self._rule_engine: AutomationsService | None = None
        self._stream = (0, 0)

    def set(
        self,
        snapshot: Snapshot,
        automations: list[dict[str, Any]] | None,
        rule_engine: AutomationsService | None,
        stream_clients: int,
        stream_dropped: int,
    ) -> None:
        self._snapshot = snapshot
        self._automations = automations
        self._rule_engine = rule_engine
        self._stream = (stream_clients, stream_dropped)

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot
        runs = GaugeMetricFamily(
            "flowrelay_flow_runs", "Flow runs in the database, by current state",
            labels=["state_type", "state"],
        )
        for (kind, name), count in sorted(snap.runs_by_state.items()):
            runs.add_metric([kind, name], count)
        yield runs
        yield GaugeMetricFamily(
            "flowrelay_outbox_backlog", "Committed events not yet confirmed by the broker",
            value=snap.outbox_backlog,
        )
        yield CounterMetricFamily(
            "flowrelay_outbox_events", "Events (and work messages) ever written to the outbox",
            value=snap.outbox_total,
        )
        yield CounterMetricFamily(
            "flowrelay_database_commits", "Write transactions this server committed (group commit: "
            "several works each)", value=snap.commits[0],
        )
        yield CounterMetricFamily(
            "flowrelay_database_works", "Units of write work this server committed", value=snap.commits[1],
        )
        if snap.dead_letter_queue is not None:
            yield GaugeMetricFamily(
                "flowrelay_dead_letter_queue_messages",
                "Messages waiting in the dead-letter queue: rejected or poison messages of every "
                "consumer (workers, rule engine, commands), inspect and replay from there",
                value=snap.dead_letter_queue,
            )
        now = utcnow()
        pools: dict[str, int] = {}
        age = GaugeMetricFamily(
            "flowrelay_worker_heartbeat_age_seconds", "Seconds since each live worker was heard",
            labels=["worker", "pool"],
        )
        held = GaugeMetricFamily(
            "flowrelay_worker_runs", "Runs each live worker said it holds in its last heartbeat",
            labels=["worker", "pool"],
        )
        for worker_id, pool, last_seen, holding in snap.workers:
            pools[pool] = pools.get(pool, 0) + 1
            age.add_metric([worker_id, pool], _seconds(now, last_seen))
            held.add_metric([worker_id, pool], holding)
        workers = GaugeMetricFamily(
            "flowrelay_workers", "Workers with a recorded heartbeat, by pool", labels=["pool"]
        )
        for pool, count in sorted(pools.items()):
            workers.add_metric([pool], count)
        yield workers
        yield age
        yield held
        stranded = GaugeMetricFamily(
            "flowrelay_runs_without_worker",
            "Runs due and unclaimed for over a heartbeat timeout while their pool has no live worker",
            labels=["pool"],
        )
        busy = GaugeMetricFamily(
            "flowrelay_work_pool_busy_runs", "Runs Pending, Running or Cancelling, by pool",
            labels=["pool"],
        )
        limits = GaugeMetricFamily(
            "flowrelay_work_pool_concurrency_limit", "Pools' concurrency limits (pools with one)",
            labels=["pool"],
        )
        for name, limit, _live, pool_busy, without in snap.pools:
            stranded.add_metric([name], without)
            busy.add_metric([name], pool_busy)
            if limit is not None:
                limits.add_metric([name], limit)
        yield stranded
        yield busy
        yield limits
        owned = GaugeMetricFamily(
            "flowrelay_server_partitions",
            "Partitions of the work (due runs, schedules) each live server leases; a server "
            "with none is live but idle (a newcomer gets its share within a lease)",
            labels=["server"],
        )
        for server in snap.servers:
            owned.add_metric([str(server["id"])], len(server["partitions"]))
        yield GaugeMetricFamily("flowrelay_servers", "Live servers on this database",
                                value=len(snap.servers))
        yield owned
        clients, dropped = self._stream
        yield GaugeMetricFamily(
            "flowrelay_api_stream_clients", "Clients connected to GET /api/stream", value=clients
        )
        yield CounterMetricFamily(
            "flowrelay_api_stream_dropped", "Stream clients dropped for reading too slowly",
            value=dropped,
        )
        yield from self._rules()

    def _rules(self) -> Iterator[Metric]:
        engine = self._rule_engine
        if engine is None:
            return
        yield CounterMetricFamily(
            "flowrelay_rule_evaluations",
            "Events the rule engine evaluated (this process, since start)",
            value=engine.evaluated,
        )
        yield _one_counter(
            "flowrelay_dead_lettered",
            "Messages dead-lettered with a reason (this process, since start)",
            ["consumer"], [(["automations"], float(engine.dead_lettered))],
        )
        families = {
            "matched": ("flowrelay_rule_matches", "Events that matched an automation's trigger"),
            "fired": ("flowrelay_automation_firings", "Automation firings whose actions ran"),
            "expired": ("flowrelay_automation_expirations", "Joins that expired unfulfilled"),
            "failed": ("flowrelay_automation_action_failures", "Automation actions that failed"),
            "errors": ("flowrelay_rule_errors", "Events an automation could not evaluate"),
        }
        built = {
            key: CounterMetricFamily(name, help_text, labels=["automation"])
            for key, (name, help_text) in families.items()
        }
        lag = GaugeMetricFamily(
            "flowrelay_automation_lag_seconds",
            "Delay of the last event an automation matched, from occurring to being evaluated",
            labels=["automation"],
        )
        enabled = GaugeMetricFamily(
            "flowrelay_automation_enabled", "1 if the automation is enabled, 0 if paused",
            labels=["automation"],
        )
        for row in self._automations or []:
            counters = row.get("counters") or {}
            for key, family in built.items():
                family.add_metric([row["name"]], float(counters.get(key, 0)))
            if "lag_ms" in counters:
                lag.add_metric([row["name"]], counters["lag_ms"] / 1000)
            enabled.add_metric([row["name"]], 1.0 if row.get("enabled") else 0.0)
        yield from built.values()
        yield lag
        yield enabled


def _one_counter(
    name: str, help_text: str, labels: list[str], values: list[tuple[list[str], float]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=labels)
    for label_values, value in values:
        family.add_metric(label_values, value)
    return family


__all__ = ["CONTENT_TYPE", "Metrics", "kind_of"]
