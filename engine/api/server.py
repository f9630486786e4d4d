"""Serving the API from `flowrelay server`: uvicorn on the server's event loop, as a task the
`Server` owns.

    api = ApiServer(server)     # checks the settings (ConfigError naming the key)
    api.bind()                  # listens (ConfigError if the address is taken), before anything starts
    await api.start()           # serves, once the engine is up
    await api.stop()            # ends the event streams, stops uvicorn within `STOP_TIMEOUT`

The socket is bound by us rather than by uvicorn, so a port in use is an error that names the
setting (uvicorn would log and exit the process), and ``api.port: 0`` gives a free port,
readable from `port`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import structlog
import uvicorn

from engine.api.app import create_app
from engine.api.context import ApiContext
from engine.errors import ConfigError
from engine.settings import ApiSettings

if TYPE_CHECKING:
    from engine.server.app import Server

log = structlog.get_logger("flowrelay.api")

#: The longest `stop` waits for open requests to finish before cancelling them.
STOP_TIMEOUT = 5


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_settings(settings: ApiSettings) -> None:
    """No token configured: only a loopback address may be bound."""
    if not settings.tokens.any and not is_loopback(settings.host):
        raise ConfigError(
            f"api.host: {settings.host!r} is not a loopback address, and no api.tokens are "
            "configured: anyone who can reach it could run and cancel flows. Add a token "
            "(api.tokens.write: [...], or FLOWRELAY_API__TOKENS__WRITE='[\"...\"]'), or bind "
            "127.0.0.1"
        )


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # `flowrelay server` handles SIGINT/SIGTERM itself and stops the API first, in order.
        yield


class ApiServer:
    def __init__(self, server: Server) -> None:
        self.settings = server.settings.api
        check_settings(self.settings)
        self.context = ApiContext.for_server(server)
        self.app = create_app(self.context)
        self._socket: socket.socket | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port listened on (the chosen one when ``api.port`` is 0)."""
        if self._socket is None:
            return self.settings.port
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def bind(self) -> None:
        """Listen on ``api.host:api.port``; `ConfigError` naming the setting if it cannot."""
        if self._socket is not None:
            return
        host, port = self.settings.host, self.settings.port
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise ConfigError(f"api.host: cannot resolve {host!r}: {exc.strerror}") from None
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(2048)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"api.port: cannot listen on {host}:{port}: {exc.strerror or exc} (another "
                "flowrelay server? set api.port or FLOWRELAY_API__PORT, or api.enabled: false)"
            ) from None
        self._socket = sock

    async def start(self) -> None:
        self.bind()
        assert self._socket is not None
        config = uvicorn.Config(
            self.app, lifespan="off", log_config=None, access_log=False,
            timeout_graceful_shutdown=int(STOP_TIMEOUT), proxy_headers=False, server_header=False,
        )
        self._uvicorn = _Uvicorn(config)
        self._task = asyncio.create_task(
            self._uvicorn.serve(sockets=[self._socket]), name="flowrelay-api"
        )
        # uvicorn sets `started` once listening; give up waiting if it failed instead.
        deadline = asyncio.get_running_loop().time() + STOP_TIMEOUT
        while not self._uvicorn.started:
            if self._task.done():
                await self._task  # raises what made it fail
                raise RuntimeError("the HTTP API stopped while starting")
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"the HTTP API did not start within {STOP_TIMEOUT:g} s")
            await asyncio.sleep(0.01)
        log.info("HTTP API listening", url=self.url, auth="tokens" if self.settings.tokens.any else "none (loopback only)")

    async def stop(self) -> None:
        """End the event streams, then stop uvicorn; cancel it if it takes longer than
        `STOP_TIMEOUT` (plus a second)."""
        self.context.log_notices.close()
        self.context.hub.close()
        if self._uvicorn is not None and self._task is not None:
            self._uvicorn.should_exit = True
            done, _ = await asyncio.wait({self._task}, timeout=STOP_TIMEOUT + 1)
            if not done:
                log.warning("HTTP API did not stop in time; cancelling it")
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            self._uvicorn = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None


__all__ = ["STOP_TIMEOUT", "ApiServer", "check_settings", "is_loopback"]
