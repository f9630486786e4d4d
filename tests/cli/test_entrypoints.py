"""Entrypoints: `path/file.py:name` and `module:name`, and a one-line error for each failure."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from engine.entrypoints import load_flow, load_object
from engine.errors import EntrypointError

FLOW_FILE = """
from engine import flow

def helper():
    return 1

@flow
def etl(n: int = 1):
    return n
"""


def test_loads_a_flow_from_a_file(write: Any) -> None:
    write("flows/etl.py", FLOW_FILE)

    loaded = load_flow("flows/etl.py:etl")

    assert loaded.name == "etl"


def test_loads_any_object_from_a_file(write: Any) -> None:
    write("things.py", "VALUE = {'a': 1}\n")

    assert load_object("things.py:VALUE") == {"a": 1}


def test_file_siblings_are_importable(write: Any) -> None:
    sibling = f"helpers_{uuid.uuid4().hex[:8]}"
    write(f"project/{sibling}.py", "def answer():\n    return 42\n")
    write("project/main.py", f"from {sibling} import answer\nRESULT = answer()\n")

    assert load_object("project/main.py:RESULT") == 42


def test_loads_from_a_module_in_the_working_directory(write: Any) -> None:
    package = f"pkg_{uuid.uuid4().hex[:8]}"
    write(f"{package}/__init__.py", "")
    write(f"{package}/flows.py", FLOW_FILE)

    assert load_flow(f"{package}.flows:etl").name == "etl"
    assert load_object("json:dumps")([1]) == "[1]"


def test_the_same_file_is_imported_once(write: Any) -> None:
    write("once.py", "import itertools\nCOUNTER = itertools.count()\nFIRST = next(COUNTER)\n")

    first = load_object("once.py:COUNTER")
    second = load_object("./once.py:COUNTER")

    assert first is second


def test_two_files_with_the_same_name_do_not_clash(write: Any) -> None:
    write("a/flows.py", "WHO = 'a'\n")
    write("b/flows.py", "WHO = 'b'\n")

    assert load_object("a/flows.py:WHO") == "a"
    assert load_object("b/flows.py:WHO") == "b"


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entrypoint", ["flows.py", "etl", ":etl", "flows.py:", "flows.py:not-a-name"]
)
def test_bad_syntax(entrypoint: str) -> None:
    with pytest.raises(EntrypointError, match=r"expected 'path/file.py:flow' or 'module:flow'$"):
        load_object(entrypoint)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EntrypointError) as info:
        load_object("flows/missing.py:etl")

    assert (
        str(info.value) == f"flows/missing.py:etl: no such file 'flows/missing.py' (in {tmp_path})"
    )


def test_missing_attribute_suggests_a_close_name(write: Any) -> None:
    write("flows.py", FLOW_FILE)

    with pytest.raises(EntrypointError) as info:
        load_flow("flows.py:etll")

    assert (
        str(info.value) == "flows.py:etll: flows.py has no attribute 'etll' (did you mean 'etl'?)"
    )


def test_not_a_flow(write: Any) -> None:
    write("flows.py", FLOW_FILE)

    with pytest.raises(
        EntrypointError,
        match=r"^flows.py:helper: a function, not a flow \(decorate it with @flow\)$",
    ):
        load_flow("flows.py:helper")


def test_import_error_inside_the_file_names_the_exception(write: Any) -> None:
    write("flows.py", "import surely_not_installed_xyz\n")

    with pytest.raises(EntrypointError) as info:
        load_flow("flows.py:etl")

    assert str(info.value) == (
        "flows.py:etl: importing flows.py failed: ModuleNotFoundError: "
        "No module named 'surely_not_installed_xyz'"
    )


def test_exception_raised_while_importing(write: Any) -> None:
    write("boom.py", "raise RuntimeError('config missing\\nsecond line')\n")

    with pytest.raises(
        EntrypointError,
        match=r"^boom.py:f: importing boom.py failed: RuntimeError: config missing$",
    ):
        load_flow("boom.py:f")


def test_syntax_error_in_the_file_names_the_line(write: Any) -> None:
    write("broken.py", "x = 1\ndef oops(:\n    pass\n")

    with pytest.raises(EntrypointError, match=r"^broken.py:f: broken.py:2: syntax error: "):
        load_flow("broken.py:f")


def test_missing_module() -> None:
    with pytest.raises(
        EntrypointError, match=r"^nosuchpkg_xyz.flows:etl: no module named 'nosuchpkg_xyz'"
    ):
        load_flow("nosuchpkg_xyz.flows:etl")


def test_a_directory_is_not_a_file(write: Any) -> None:
    write("flows/__init__.py", "")

    with pytest.raises(EntrypointError, match=r"^flows/:etl: flows/ is a directory"):
        load_flow("flows/:etl")


def test_a_value_is_not_a_flow(write: Any) -> None:
    write("things.py", "VALUE = {'a': 1}\n")

    with pytest.raises(EntrypointError, match=r"^things.py:VALUE: a dict, not a flow$"):
        load_flow("things.py:VALUE")
