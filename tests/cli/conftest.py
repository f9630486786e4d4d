"""CLI tests run the CLI in process (`cli`, `write`, `restore_process_state` live in
tests/conftest.py); every test here leaves no logging or import state behind."""

import pytest


@pytest.fixture(autouse=True)
def _restore(restore_process_state: None) -> None:
    """Apply `restore_process_state` to every CLI test."""
