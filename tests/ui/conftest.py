"""Browser tests of the web UI: headless Chromium (Debian's `/usr/bin/chromium`, driven by
Playwright) against one real `flowrelay server` + `flowrelay worker` on RabbitMQ for the session.

Every `page` fails its test if the browser logged a console error or an uncaught exception.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AMQP_URL, CI, require_service
from tests.ui.cluster import UiCluster

CHROMIUM = os.environ.get("FLOWRELAY_TEST_CHROMIUM", "/usr/bin/chromium")
#: every flow of tests/ui/flows.py, deployed as FLOW/ui
FLOWS = ["up", "down", "slow", "chatty", "pinged", "witness", "broken"]


@pytest.fixture(scope="package")  # torn down after tests/ui: Playwright's loop must not outlive it
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiCluster]:
    require_service("RabbitMQ", AMQP_URL, 5672)
    cluster = UiCluster(AMQP_URL, tmp_path_factory.mktemp("ui-cluster"))
    try:
        cluster.start()
        cluster.deploy_all("ui", FLOWS)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="package")  # torn down after tests/ui: Playwright's loop must not outlive it
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


class Console:
    """What the page said on its console: errors and uncaught exceptions fail the test."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def on_console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console.error: {message.text} ({message.location})")

    def on_page_error(self, error: Any) -> None:
        self.errors.append(f"uncaught: {error}")


@pytest.fixture
def page(ui: UiCluster, browser: Any) -> Iterator[Any]:
    context = browser.new_context(base_url=ui.url, viewport={"width": 1360, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    console = Console()
    page.on("console", console.on_console)
    page.on("pageerror", console.on_page_error)
    try:
        yield page
    finally:
        context.close()
    assert not console.errors, "\n".join(console.errors)


def open_page(page: Any, route: str) -> None:
    """Open `#<route>` and wait until the page rendered and the event stream is connected."""
    page.goto(f"/#{route}")
    page.wait_for_selector("#live.is-live")
    path = route.split("?")[0]
    page.wait_for_function("path => document.querySelector('main').dataset.route === path", arg=path)
