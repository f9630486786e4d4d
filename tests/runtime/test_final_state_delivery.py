"""A finished flow run keeps reporting its final state while the engine cannot be reached (the
broker restarting), for up to `runtime.report_timeout_seconds`; other errors are not retried."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.broker.errors import BrokerUnavailable, RpcError, RpcTimeout
from engine.runtime.delivery import delivered as _delivered
from engine.settings import reset_settings


@pytest.fixture
def report_timeout(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("FLOWRELAY_RUNTIME__REPORT_TIMEOUT_SECONDS", "1")
    reset_settings()
    yield
    reset_settings()


async def test_the_final_state_is_reported_again_until_the_engine_answers(report_timeout: None) -> None:
    # Given an engine unreachable for two attempts (broker down, then no reply in time)
    failures = [BrokerUnavailable("connection closed"), RpcTimeout("no reply in 10 s")]
    calls = []

    async def propose() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "Completed"

    # When the final state is delivered, Then the third attempt reaches it
    assert await _delivered(propose, what="the final state") == "Completed"
    assert len(calls) == 3


async def test_an_unreachable_engine_is_given_up_on_after_the_timeout(report_timeout: None) -> None:
    async def propose() -> str:
        raise BrokerUnavailable("RabbitMQ is down")

    with pytest.raises(BrokerUnavailable):
        await _delivered(propose, what="the final state")


async def test_an_engine_error_is_not_retried(report_timeout: None) -> None:
    calls = []

    async def propose() -> str:
        calls.append(1)
        raise RpcError("ValidationError", "bad request")

    with pytest.raises(RpcError):
        await _delivered(propose, what="the final state")
    assert len(calls) == 1
