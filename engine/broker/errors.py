"""Errors raised by the broker port (both implementations raise the same ones).

    engine.errors.BrokerError           root of every broker problem
    ├── BrokerUnavailable               cannot connect, or the connection/channel went away mid-call
    ├── PublishTimeout (TimeoutError)   the broker did not confirm a publish in time (it may still
    │                                   have taken it: retrying can duplicate, consumers dedupe)
    ├── PublishRejected                 the broker refused a publish (basic.nack)
    ├── Unroutable                      a mandatory publish that no queue received
    ├── TopologyError                   an exchange/queue is missing, locked by another connection,
    │                                   or exists with different arguments
    ├── MessageAlreadySettled           ack/nack/reject twice on one delivery
    ├── RpcError                        the RPC server answered with an error (`.type`, `.message`)
    └── RpcTimeout (TimeoutError)       no RPC reply within the timeout

aio-pika/aiormq exceptions never leave `engine.broker`: the RabbitMQ adapter translates them here,
chained with `from exc`.
"""

from __future__ import annotations

from engine.errors import BrokerError

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "MessageAlreadySettled",
    "PublishRejected",
    "PublishTimeout",
    "RpcError",
    "RpcTimeout",
    "TopologyError",
    "Unroutable",
]


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached, or the connection was lost during the call."""


class PublishTimeout(BrokerError, TimeoutError):
    """No publisher confirm within the timeout. The message may or may not have been taken."""


class PublishRejected(BrokerError):
    """The broker answered a publish with basic.nack (e.g. a queue refusing new messages)."""


class Unroutable(BrokerError):
    """A mandatory publish reached no queue (no binding matches, or the queue was deleted)."""

    def __init__(self, message: str, *, exchange: str, routing_key: str) -> None:
        super().__init__(message)
        self.exchange = exchange
        self.routing_key = routing_key


class TopologyError(BrokerError):
    """An exchange or queue is missing, exclusive to another connection, or declared differently."""


class MessageAlreadySettled(BrokerError):
    """A delivery was acked, nacked or rejected twice."""


class RpcError(BrokerError):
    """The RPC server handled the call and answered with an error."""

    def __init__(self, type: str, message: str) -> None:
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message


class RpcTimeout(BrokerError, TimeoutError):
    """No RPC reply arrived within the timeout (the server may still run the call)."""
