"""The UI on a server with API tokens: it asks for one, takes `?token=` once from the address
and keeps it (the event stream gets it as `access_token`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import AMQP_URL, require_service
from tests.ui.cluster import UiCluster
from tests.ui.conftest import Console

pytestmark = pytest.mark.rabbitmq

TOKEN = "ui-secret-token"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiCluster]:
    require_service("RabbitMQ", AMQP_URL, 5672)
    cluster = UiCluster(AMQP_URL, tmp_path_factory.mktemp("ui-secured"))
    cluster.env["FLOWRELAY_API__TOKENS__WRITE"] = f'["{TOKEN}"]'
    try:
        cluster.start(worker=False)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def secured_page(browser: Any, secured: UiCluster) -> Iterator[Any]:
    """A page on the secured server; refused requests (401) are the only console errors allowed."""
    context = browser.new_context(base_url=secured.url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    console = Console()
    page.on("console", console.on_console)
    page.on("pageerror", console.on_page_error)
    try:
        yield page
    finally:
        context.close()
    unexpected = [e for e in console.errors if "status of 401" not in e]
    assert not unexpected, "\n".join(unexpected)


def test_without_a_token_the_ui_asks_for_one_and_uses_what_is_typed(secured_page: Any) -> None:
    page = secured_page
    page.goto("/#/runs")

    page.wait_for_selector("#banner:not([hidden])")
    assert "needs an API token" in page.inner_text("#banner")
    assert page.inner_text("#live") == "no token"

    page.fill("#token-input", TOKEN)
    page.click("#banner button[type=submit]")
    page.wait_for_selector("#live.is-live")
    page.wait_for_selector("main[data-route='/runs']")
    assert page.is_hidden("#banner")
    assert "No flow runs yet" in page.inner_text("#runs-body")


def test_token_in_the_address_is_kept_and_removed_from_it(secured_page: Any) -> None:
    page = secured_page
    page.goto(f"/?token={TOKEN}#/deployments")

    page.wait_for_selector("#live.is-live")  # the stream accepted ?access_token=
    page.wait_for_selector("main[data-route='/deployments']")
    assert "token" not in page.url
    assert page.evaluate("localStorage.getItem('flowrelay.token')") == TOKEN
    assert "No deployments" in page.inner_text("main")
    page.goto("/#/automations")  # later visits need no ?token=
    page.wait_for_selector("main[data-route='/automations']")
    assert "No automations" in page.inner_text("main")
