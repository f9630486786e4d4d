"""A wait that sees its broker connection come back reads the run again (issue 11): the run's
final event may have been published while the waiter's temporary queue was gone, and the caller
must not wait out its whole timeout for a run that is already final."""

from __future__ import annotations

import asyncio
import time

from engine.broker import Names, from_url
from engine.runtime.waiting import RunWaiter
from engine.service import EngineService
from engine.settings import get_settings
from engine.states import Completed, Running


async def test_a_wait_reads_the_run_again_after_a_reconnect() -> None:
    service = await EngineService.open(get_settings().database.url)
    async with from_url("memory://") as broker:
        up_since = [time.monotonic() - 3600.0]  # connected for an hour
        broker.connected_for = lambda: time.monotonic() - up_since[0]  # type: ignore[method-assign]
        names = Names()
        await broker.declare_exchange(names.events, "topic", durable=True)
        waiter = RunWaiter(broker, names)
        try:
            # Given a wait on a running run
            run = await service.create_flow_run("etl")
            await service.set_flow_run_state(run.id, Running())
            waiting = asyncio.ensure_future(waiter.wait(service, run.id, timeout=60))
            await asyncio.sleep(0.2)

            # When the run finishes while its event is lost (no relay publishes it here), then
            # the broker connection is re-established
            await service.set_flow_run_state(run.id, Completed())
            await asyncio.sleep(1.0)
            assert not waiting.done()  # nothing told it yet
            up_since[0] = time.monotonic()

            # Then the wait reads the run again and returns it, final, long before its timeout
            done = await asyncio.wait_for(waiting, 10)
            assert done.state is not None and done.state.name == "Completed"
        finally:
            await waiter.close()
            await service.close()
