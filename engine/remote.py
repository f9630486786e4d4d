"""`RemoteEngine`: the `EngineAPI` over the broker's JSON RPC, for workers, the CLI and flows
in distributed mode. Errors come back as the same exception types the service raised."""

from __future__ import annotations

import functools
import typing
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
from pydantic_core import to_jsonable_python

import engine.errors as engine_errors
from engine.broker import Broker
from engine.broker import errors as broker_errors
from engine.broker.rpc import RpcClient
from engine.broker.topology import Names
from engine.server.commands import SERVICE_COMMANDS


class RemoteError(engine_errors.FlowrelayError):
    """An error the server reported that has no local exception type."""


def _exception_for(error: broker_errors.RpcError) -> Exception:
    import automations.errors as automation_errors

    for module in (engine_errors, broker_errors, automation_errors):
        cls = getattr(module, error.type, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                return cls(error.message)
            except TypeError:
                break
    return RemoteError(f"{error.type}: {error.message}")


@functools.cache
def _return_adapter(name: str) -> pydantic.TypeAdapter[Any] | None:
    import engine.ports as ports

    method = getattr(ports.EngineAPI, name, None)
    module: object = ports
    if method is None:  # not on the port: read the service's own hints
        import engine.service as service_module

        method = getattr(service_module.EngineService, name, None)
        module = service_module
        if method is None:
            return None
    hints = typing.get_type_hints(method, vars(module))
    ret = hints.get("return")
    if ret is None or ret is type(None):
        return None
    return pydantic.TypeAdapter(ret)


class RemoteEngine:
    """Calls the engine service of `flowrelay server` through the broker."""

    def __init__(self, broker: Broker, *, timeout: float = 10.0, names: Names | None = None) -> None:
        self.broker = broker
        self.names = names or Names()
        self.timeout = timeout
        self._rpc = RpcClient(broker, self.names.commands, timeout=timeout)
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self._rpc.start()
            self._started = True

    async def check_protocol(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """`ProtocolMismatch` (naming both versions) if the server speaks another protocol
        version; False if no server answered within `timeout` (not up yet: every later reply is
        checked too), True once checked."""
        await self.start()
        try:
            await self._rpc.call("protocol", {}, timeout=timeout)
        except broker_errors.RpcError as exc:
            raise _exception_for(exc) from None
        except (broker_errors.RpcTimeout, broker_errors.Unroutable, broker_errors.BrokerUnavailable):
            return False  # no server (its command queue not declared yet), or the broker away
        return True

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self._rpc.close()

    async def call(self, method: str, **params: Any) -> Any:
        await self.start()
        try:
            reply = await self._rpc.call(method, to_jsonable_python(params), timeout=self.timeout)
        except broker_errors.RpcError as exc:
            raise _exception_for(exc) from None
        value = reply.get("value")
        adapter = _return_adapter(method)
        return adapter.validate_python(value) if adapter is not None and value is not None else value

    async def heartbeat(
        self,
        worker_id: str,
        pool: str,
        flow_run_ids: list[Any],
        attempts: dict[Any, int] | None = None,
        info: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Send a worker's heartbeat; the reply grants its lease and names the runs to stop
        (`engine.server.heartbeats`)."""
        reply = await self.call(
            "heartbeat", worker_id=worker_id, pool=pool, flow_run_ids=flow_run_ids,
            attempts=attempts, info=info,
        )
        return reply if isinstance(reply, dict) else {}

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if name not in SERVICE_COMMANDS:
            raise AttributeError(name)

        async def method(*args: Any, **kwargs: Any) -> Any:
            if args:
                import inspect

                import engine.ports as ports

                sig = inspect.signature(getattr(ports.EngineAPI, name))
                bound = sig.bind_partial(None, *args, **kwargs)
                kwargs = {k: v for k, v in bound.arguments.items() if k != "self"}
            return await self.call(name, **kwargs)

        method.__name__ = name
        return method
