"""JSON RPC over the broker (never pickle: anyone who can publish must not run code).

Wire format (content type application/json):

    request   {"v": 2, "method": "create_flow_run", "params": {...}}
              properties: reply_to = the client's reply queue, correlation_id = a fresh id
    reply     {"v": 2, "result": {...}}  or  {"v": 2, "error": {"type": "ObjectNotFound", "message": "..."}}
              published to the default exchange with routing key `reply_to`, same correlation_id

`v` is the protocol version (`PROTOCOL_VERSION`; a message without one is version 1, what
flowrelay spoke before it was versioned). Both sides check it: a request of another version is
answered with an error of type ``ProtocolMismatch`` naming both versions, never run; a reply of
another version fails the call the same way. Workers and clients that started before an upgrade
of the server (or after one) are told so on their first call, not left to misread the messages.

The server acks a request once it has replied: a handler error becomes an error reply, a
malformed request an error reply (type `BadRequest`) or, without a `reply_to`, a dead letter.
Each client owns one exclusive auto-delete reply queue and matches replies to calls by
correlation id. Every wait is bounded; a timed-out call raises `RpcTimeout`, and a late reply
is dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

from engine.broker.base import Broker, Consumer, IncomingMessage
from engine.broker.errors import BrokerUnavailable, PublishTimeout, RpcError, RpcTimeout, Unroutable
from engine.broker.topology import QueueSpec
from engine.errors import FlowrelayError

__all__ = [
    "PROTOCOL_VERSION", "ProtocolMismatch", "RpcClient", "RpcHandler", "RpcServer",
    "encode_request", "parse_request",
]

log = logging.getLogger("engine.broker.rpc")

RpcHandler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]

#: The version of the wire protocol (commands, replies, dispatches) this code speaks. 2: work
#: dispatches carry the code to run (`code`), heartbeats what the worker says of itself (`info`),
#: and every request and reply its version.
PROTOCOL_VERSION = 2


class ProtocolMismatch(ValueError):
    """A message of another protocol version than this side's."""


def mismatch_message(theirs: int, *, they: str) -> str:
    """Both versions and what to do, for an error reply or a failed call."""
    return (f"{they} speaks flowrelay protocol {theirs}, this side {PROTOCOL_VERSION}: run the same "
            "flowrelay version on servers, workers and clients (upgrade the older side)")


def _version(data: dict[str, Any]) -> int:
    value = data.get("v", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def encode_request(method: str, params: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, "method": method, "params": params or {}}).encode()


def parse_request(body: bytes) -> tuple[str, dict[str, Any]]:
    """`(method, params)` of a request body; ValueError saying what is wrong with it
    (`ProtocolMismatch` for a well-formed request of another protocol version)."""
    try:
        data = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"request body is not JSON: {exc}") from exc
    except RecursionError:  # `[[[[...`: not a ValueError, and it would be requeued forever
        raise ValueError("request body is JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"request must be a JSON object, not {type(data).__name__}")
    method = data.get("method")
    if not isinstance(method, str) or not method:
        raise ValueError("request has no 'method' string")
    params = data.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValueError(
            f"'params' of {method!r} must be a JSON object, not {type(params).__name__}"
        )
    version = _version(data)
    if version != PROTOCOL_VERSION:
        raise ProtocolMismatch(
            f"request {method!r} not run: " + mismatch_message(version, they="the caller")
        )
    return method, params


def _error_body(type_: str, message: str) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, "error": {"type": type_, "message": message}}).encode()


class RpcServer:
    """Serve `handler(method, params) -> dict` on `queue` (e.g. `flowrelay.commands`)."""

    def __init__(
        self,
        broker: Broker,
        queue: str,
        handler: RpcHandler,
        *,
        prefetch: int = 16,
        reply_timeout: float = 10.0,
    ) -> None:
        self._broker = broker
        self._queue = queue
        self._handler = handler
        self._prefetch = prefetch
        self._reply_timeout = reply_timeout
        self._consumer: Consumer | None = None

    async def start(self) -> None:
        if self._consumer is None:
            self._consumer = await self._broker.consume(
                self._queue, self._on_request, prefetch=self._prefetch
            )

    async def stop(self, *, grace: float = 10.0) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.cancel(grace=grace)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _on_request(self, message: IncomingMessage) -> None:
        try:
            method, params = parse_request(message.body)
        except ValueError as exc:
            log.warning("malformed RPC request on %r (%r): %s", self._queue, message, exc)
            if message.reply_to:
                kind = "ProtocolMismatch" if isinstance(exc, ProtocolMismatch) else "BadRequest"
                await self._reply(message, _error_body(kind, str(exc)))
                await message.ack()
            else:
                await message.reject()  # nobody to tell: keep it for inspection
            return
        try:
            result = await self._handler(method, params)
            if not isinstance(result, dict):
                raise TypeError(
                    f"handler for {method!r} returned {type(result).__name__}, not a dict"
                )
            body = json.dumps({"v": PROTOCOL_VERSION, "result": result}).encode()
        except Exception as exc:
            if isinstance(exc, FlowrelayError):
                log.info("RPC %r on %r failed: %r", method, self._queue, exc)
            else:
                log.exception("RPC %r on %r failed", method, self._queue)
            body = _error_body(type(exc).__name__, str(exc))
        if message.reply_to:
            await self._reply(message, body)
        await message.ack()

    async def _reply(self, message: IncomingMessage, body: bytes) -> None:
        assert message.reply_to is not None
        try:
            await self._broker.publish(
                "",
                message.reply_to,
                body,
                correlation_id=message.correlation_id,
                persistent=False,
                confirm=False,  # a lost reply is the caller's timeout
                timeout=self._reply_timeout,
            )
        except Unroutable:
            log.info("RPC reply dropped: the client's queue %r is gone", message.reply_to)


class RpcClient:
    """Call an `RpcServer`: `await client.call("read_flow_run", {"id": ...})`."""

    def __init__(self, broker: Broker, queue: str, *, timeout: float = 10.0) -> None:
        self._broker = broker
        self._queue = queue
        self._timeout = timeout
        self._reply_queue: str | None = None
        self._consumer: Consumer | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def start(self) -> None:
        if self._reply_queue is not None:
            return
        reply_queue = await self._broker.declare_queue(QueueSpec.temporary(f"{self._queue}.reply"))
        self._consumer = await self._broker.consume(
            reply_queue, self._on_reply, prefetch=0, auto_ack=True
        )
        self._reply_queue = reply_queue

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        reply_queue, self._reply_queue = self._reply_queue, None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrokerUnavailable(f"RPC client for {self._queue!r} closed"))
        if consumer is not None:
            await consumer.cancel(grace=1.0)
        if reply_queue is not None:
            try:
                await self._broker.delete_queue(reply_queue)
            except BrokerUnavailable:
                pass  # exclusive and auto-delete: it goes with the connection anyway

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the RPC deadline, part of the API
    ) -> dict[str, Any]:
        """Send a request and wait for its reply. Raises `RpcError` for an error reply,
        `RpcTimeout` (a TimeoutError) without a reply in time, `Unroutable` without a server
        queue, `BrokerUnavailable` when the broker is down."""
        if self._reply_queue is None:
            raise RuntimeError("RpcClient.start() (or `async with`) before call()")
        timeout = self._timeout if timeout is None else timeout
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            async with asyncio.timeout(timeout):
                await self._broker.publish(
                    "",
                    self._queue,
                    encode_request(method, params),
                    message_id=correlation_id,
                    correlation_id=correlation_id,
                    reply_to=self._reply_queue,
                    timeout=timeout,
                )
                return await future
        except PublishTimeout:
            raise
        except TimeoutError as exc:
            raise RpcTimeout(
                f"no reply to {method!r} from {self._queue!r} within {timeout:g}s "
                "(is the server consuming that queue?)"
            ) from exc
        finally:
            self._pending.pop(correlation_id, None)

    async def _on_reply(self, message: IncomingMessage) -> None:
        await message.ack()
        future = self._pending.get(message.correlation_id or "")
        if future is None or future.done():
            log.debug("dropping a late or unknown RPC reply %r", message.correlation_id)
            return
        try:
            data = message.json()
        except ValueError as exc:
            future.set_exception(RpcError("BadReply", f"reply is not JSON: {exc}"))
            return
        version = _version(data) if isinstance(data, dict) else -1
        error = data.get("error") if isinstance(data, dict) else None
        if version != PROTOCOL_VERSION:
            future.set_exception(RpcError("ProtocolMismatch", mismatch_message(
                version, they=f"the server behind {self._queue!r}")))
        elif isinstance(error, dict):
            future.set_exception(
                RpcError(str(error.get("type") or "Error"), str(error.get("message") or ""))
            )
        elif isinstance(data, dict) and isinstance(data.get("result"), dict):
            future.set_result(data["result"])
        else:
            future.set_exception(RpcError("BadReply", "reply has neither 'result' nor 'error'"))
