"""Messages counted by RabbitMQ itself, for the benchmarks: a virtual host of the benchmark's own
and its totals from the management API (messages published into it, delivered or got from it,
publisher confirms), so other users of the broker do not count.

    with bench_vhost() as (amqp_url, read):   # None for read when RabbitMQ cannot say
        before = read()
        ...
        after = read()

Needs ``rabbitmqctl`` (to add the vhost) and the management plugin, which it enables when it is
not (``rabbitmq-plugins enable rabbitmq_management``: an online change, no restart) and disables
again afterwards (its statistics cost the broker ~0.5 ms of CPU per run). The
management API samples its counters every few seconds (`collect_statistics_interval`, 5 s):
`read` waits until two readings a second apart agree.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

API = "http://127.0.0.1:15672/api"
AUTH = ("guest", "guest")


def _get(path: str) -> Any:
    import httpx

    return httpx.get(f"{API}{path}", auth=AUTH, timeout=5).json()


def _management_up() -> bool:
    try:
        _get("/overview")
    except Exception:  # noqa: BLE001 - not up (yet)
        return False
    return True


def _ensure_management() -> bool | None:
    """True: it was up; None: this call enabled it (to disable after); False: it cannot be had."""
    if _management_up():
        return True
    if shutil.which("rabbitmq-plugins") is None:
        return False
    subprocess.run(["rabbitmq-plugins", "enable", "rabbitmq_management"], capture_output=True, check=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _management_up():
            return None
        time.sleep(1)
    return False


def _totals(vhost: str) -> dict[str, int]:
    stats = _get(f"/vhosts/{urllib.parse.quote(vhost, safe='')}").get("message_stats") or {}
    return {key: int(stats.get(key, 0)) for key in ("publish", "deliver_get", "confirm", "ack")}


def _settled(vhost: str) -> dict[str, int]:
    time.sleep(6)  # one statistics interval at least
    last = _totals(vhost)
    while True:
        time.sleep(1.0)
        now = _totals(vhost)
        if now == last:
            return now
        last = now


@contextlib.contextmanager
def bench_vhost(base_url: str) -> Iterator[tuple[str, Callable[[], dict[str, int]] | None]]:
    """A fresh vhost on the broker of `base_url` (guest's permissions) and a reader of its
    message totals; falls back to `base_url` and no reader when the broker cannot tell."""
    management = _ensure_management() if shutil.which("rabbitmqctl") is not None else False
    if management is False:
        yield base_url, None
        return
    vhost = f"frbench-{os.getpid()}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], capture_output=True, check=True)
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                   capture_output=True, check=True)
    parts = urllib.parse.urlsplit(base_url)
    url = urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(vhost, safe="")))
    try:
        yield url, lambda: _settled(vhost)
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, check=False)
        if management is None:  # enabled for this benchmark: its statistics cost the broker CPU
            subprocess.run(["rabbitmq-plugins", "disable", "rabbitmq_management"], capture_output=True,
                           check=False)
