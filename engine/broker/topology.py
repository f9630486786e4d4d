"""The broker topology, declared in one place.

    <prefix>.events              topic exchange, durable: every event, routed by its name
    <prefix>.dlx                 fanout exchange, durable: where rejected/poison messages go
    <prefix>.dead                durable quorum queue bound to the dlx: inspect and replay from here
    <prefix>.pool.<name>         durable quorum work queue per worker pool
    <prefix>.commands            durable classic queue of the engine service (JSON RPC)
    <prefix>.sub.<name>          durable quorum queue per event subscriber (e.g. automations),
                                 bound to `events` with the subscriber's patterns

Work and subscriber queues are quorum queues with `x-delivery-limit` (RabbitMQ 3.10 has no
default: without it a poison message is redelivered forever) and dead-letter to `<prefix>.dlx`.
Quorum queues have no exclusive consumers and no priorities.

The command queue is a classic durable queue dead-lettering to `<prefix>.dlx`: an RPC request
is short-lived (answered, or its caller times out), a malformed one gets an error reply or is
rejected to the dlx, never requeued, so it needs no delivery count, and a classic queue costs
about half a quorum queue's time per request (no Raft round). A `<prefix>.commands` declared
as a quorum queue by an earlier version is kept as it is (see `Server.start`). The prefix is "flowrelay"; tests use
a unique prefix so they never share queues.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "COMMANDS_QUEUE",
    "DEAD_LETTER_EXCHANGE",
    "DEAD_LETTER_QUEUE",
    "DEFAULT_DELIVERY_LIMIT",
    "DEFAULT_PREFIX",
    "EVENTS_EXCHANGE",
    "Binding",
    "ExchangeSpec",
    "ExchangeType",
    "Names",
    "QueueSpec",
    "Topology",
    "build_topology",
    "command_queue",
    "pool_queue",
]

DEFAULT_PREFIX = "flowrelay"
DEFAULT_DELIVERY_LIMIT = 5

ExchangeType = Literal["topic", "fanout", "direct"]

_NAME = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")


def _check_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"{kind} name {name!r} is not valid: use letters, digits, '-', '_' and single dots"
        )
    return name


@dataclass(frozen=True)
class ExchangeSpec:
    name: str
    type: ExchangeType = "topic"
    durable: bool = True


@dataclass(frozen=True)
class QueueSpec:
    """A queue declaration. Quorum queues must be durable, shared and not auto-deleted."""

    name: str
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    quorum: bool = False
    delivery_limit: int | None = None
    dead_letter_exchange: str | None = None
    #: Only one consumer at a time gets deliveries; the next takes over when it goes away
    #: (`x-single-active-consumer`): an active/passive pair of consumers, messages in order.
    single_active_consumer: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a queue needs a name (use QueueSpec.temporary() for a private one)")
        if self.quorum and (self.exclusive or self.auto_delete or not self.durable):
            raise ValueError(
                f"queue {self.name!r}: quorum queues are durable, never exclusive or auto-delete"
            )
        if self.delivery_limit is not None:
            if not self.quorum:
                raise ValueError(
                    f"queue {self.name!r}: delivery_limit needs quorum=True (RabbitMQ ignores it otherwise)"
                )
            if self.delivery_limit < 0:
                raise ValueError(f"queue {self.name!r}: delivery_limit must be >= 0")

    @classmethod
    def temporary(cls, prefix: str = f"{DEFAULT_PREFIX}.tmp") -> QueueSpec:
        """A uniquely named, exclusive, auto-delete queue (RPC replies, event tails)."""
        return cls(
            name=f"{prefix}.{uuid.uuid4().hex}", durable=False, exclusive=True, auto_delete=True
        )

    def arguments(self) -> dict[str, Any]:
        """The `x-` arguments RabbitMQ stores with the queue."""
        args: dict[str, Any] = {}
        if self.quorum:
            args["x-queue-type"] = "quorum"
        if self.delivery_limit is not None:
            args["x-delivery-limit"] = self.delivery_limit
        if self.single_active_consumer:
            args["x-single-active-consumer"] = True
        if self.dead_letter_exchange is not None:
            args["x-dead-letter-exchange"] = self.dead_letter_exchange
        return args


@dataclass(frozen=True)
class Binding:
    queue: str
    exchange: str
    routing_key: str


@dataclass(frozen=True)
class Topology:
    exchanges: tuple[ExchangeSpec, ...] = ()
    queues: tuple[QueueSpec, ...] = ()
    bindings: tuple[Binding, ...] = ()

    def __add__(self, other: Topology) -> Topology:
        return Topology(
            self.exchanges + other.exchanges,
            self.queues + other.queues,
            self.bindings + other.bindings,
        )


def configured_prefix() -> str:
    """`broker.prefix` from the configuration (default "flowrelay")."""
    try:
        from engine.settings import get_settings

        return get_settings().broker.prefix
    except Exception:  # noqa: BLE001 - no usable configuration: the default names
        return DEFAULT_PREFIX


@dataclass(frozen=True)
class Names:
    """The names of the topology's exchanges and queues under one prefix (by default the
    configured `broker.prefix`)."""

    prefix: str = field(default_factory=configured_prefix)

    def __post_init__(self) -> None:
        _check_name("prefix", self.prefix)

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def dlx(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def commands(self) -> str:
        return f"{self.prefix}.commands"

    def pool(self, name: str) -> str:
        return f"{self.prefix}.pool.{_check_name('pool', name)}"

    def subscription(self, name: str) -> str:
        return f"{self.prefix}.sub.{_check_name('subscription', name)}"


EVENTS_EXCHANGE = Names(DEFAULT_PREFIX).events
DEAD_LETTER_EXCHANGE = Names(DEFAULT_PREFIX).dlx
DEAD_LETTER_QUEUE = Names(DEFAULT_PREFIX).dead
COMMANDS_QUEUE = Names(DEFAULT_PREFIX).commands


def pool_queue(name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The work queue of pool `name`: `flowrelay.pool.<name>`."""
    return Names(prefix).pool(name)


def command_queue(prefix: str = DEFAULT_PREFIX) -> QueueSpec:
    """The engine service's RPC queue: classic, durable, dead-lettering to `<prefix>.dlx`."""
    names = Names(prefix)
    return QueueSpec(names.commands, dead_letter_exchange=names.dlx)


def build_topology(
    *,
    pools: Iterable[str] = (),
    subscriptions: Mapping[str, Sequence[str]] | None = None,
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
    prefix: str = DEFAULT_PREFIX,
) -> Topology:
    """The whole topology: events + dead-lettering + commands, a queue per pool, and a durable
    queue per subscriber bound with its routing patterns (e.g. `{"automations": ["#"]}`)."""
    names = Names(prefix)

    def work_queue(name: str) -> QueueSpec:
        return QueueSpec(
            name,
            quorum=True,
            delivery_limit=delivery_limit,
            dead_letter_exchange=names.dlx,
        )

    queues = [QueueSpec(names.dead, quorum=True), command_queue(prefix)]
    bindings = [Binding(names.dead, names.dlx, "#")]
    queues += [work_queue(names.pool(pool)) for pool in pools]
    for subscriber, patterns in (subscriptions or {}).items():
        queue = names.subscription(subscriber)
        queues.append(work_queue(queue))
        bindings += [Binding(queue, names.events, pattern) for pattern in patterns]
    return Topology(
        exchanges=(ExchangeSpec(names.events, "topic"), ExchangeSpec(names.dlx, "fanout")),
        queues=tuple(queues),
        bindings=tuple(bindings),
    )
