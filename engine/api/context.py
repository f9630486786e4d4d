"""What the API's handlers work with: the server's engine service, its rule engine, the event
hub of the live stream (with its notices of new log lines) and the metrics, gathered once per
server."""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
from fastapi import Request

from engine.api.metrics import Metrics
from engine.api.stream import EventHub, LogNotices
from engine.schemas import Event
from engine.service import EngineService
from engine.settings import ApiSettings

if TYPE_CHECKING:
    from automations.service import AutomationsService
    from engine.server.app import Server

log = structlog.get_logger("flowrelay.api")


def _version() -> str:
    try:
        return importlib.metadata.version("flowrelay")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        return "0+unknown"


@dataclass
class ApiContext:
    settings: ApiSettings
    service: EngineService
    automations: AutomationsService | None = None
    hub: EventHub = field(default_factory=EventHub)
    metrics: Metrics = field(default_factory=Metrics)
    version: str = field(default_factory=_version)
    #: How many messages wait in the dead-letter queue (None: not known here)
    dead_letters: Callable[[], Awaitable[int]] | None = None
    #: ``flow-run.logs`` frames on `hub` (`for_server` makes it the service's log listener)
    log_notices: LogNotices = field(init=False)

    def __post_init__(self) -> None:
        self.log_notices = LogNotices(self.hub)

    @classmethod
    def for_server(cls, server: Server) -> ApiContext:
        """The context of `server`, fed with every event its relay publishes and told of every
        log line its engine service stores."""
        ctx = cls(
            settings=server.settings.api, service=server.service, automations=server.automations,
            hub=EventHub(server.settings.api.stream_buffer),
            dead_letters=functools.partial(server.broker.message_count, server.names.dead),
        )
        server.published_listeners.append(ctx.on_published)
        server.service.add_log_listener(ctx.log_notices.stored)
        return ctx

    def on_published(self, event: Event, routing_key: str) -> None:
        """The relay's callback: count the event, hand it to the stream clients. Never raises
        (it runs on the relay's task)."""
        try:
            self.metrics.observe(event, routing_key)
            if not routing_key.startswith("dispatch."):
                self.hub.publish(event)
        except Exception:  # noqa: BLE001 - the relay must go on whatever happens here
            log.exception("could not hand a published event to the API", event_id=str(event.id))


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


__all__ = ["ApiContext", "context"]
