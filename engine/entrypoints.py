"""Load a flow (or any object) from an entrypoint string.

Two forms, as in Prefect::

    path/to/file.py:name     the file is imported as a module; its folder goes on sys.path
                             so sibling imports (``from helpers import x``) work, and so does
                             its project's root (`engine.code.find_root`)
    package.module:name      imported like any module; the working directory is importable

Every failure is an `EntrypointError` with a one-line message naming the entrypoint.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from engine.errors import EntrypointError

if TYPE_CHECKING:
    from engine.runtime.flows import Flow

SYNTAX_HINT = "expected 'path/file.py:flow' or 'module:flow'"


def load_object(entrypoint: str) -> Any:
    """The object named by `entrypoint` (``path/file.py:name`` or ``package.module:name``)."""
    target, name = _split(entrypoint)
    if _is_file_target(target):
        module = _import_file(target, entrypoint)
    else:
        module = _import_module(target, entrypoint)
    return _get_attribute(module, name, entrypoint)


def load_flow(entrypoint: str) -> Flow[..., Any]:
    """The flow named by `entrypoint`; `EntrypointError` if the object is not a ``@flow``."""
    from engine.runtime.flows import Flow
    from engine.runtime.tasks import Task

    obj = load_object(entrypoint)
    if isinstance(obj, Flow):
        return obj
    if isinstance(obj, Task):
        what = "a task, not a flow (tasks run inside flows: call it from a @flow)"
    elif inspect.isfunction(obj):
        what = "a function, not a flow (decorate it with @flow)"
    else:
        what = f"a {type(obj).__name__}, not a flow"
    raise EntrypointError(f"{entrypoint}: {what}")


def _split(entrypoint: str) -> tuple[str, str]:
    target, sep, name = entrypoint.strip().rpartition(":")
    if not sep or not target or not name:
        raise EntrypointError(f"{entrypoint!r}: {SYNTAX_HINT}")
    if not all(part.isidentifier() for part in name.split(".")):
        raise EntrypointError(f"{entrypoint!r}: {name!r} is not a Python name; {SYNTAX_HINT}")
    return target, name


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _import_file(target: str, entrypoint: str) -> ModuleType:
    path = Path(target).expanduser()
    if not path.is_file():
        if path.is_dir():
            raise EntrypointError(f"{entrypoint}: {target} is a directory, not a .py file")
        raise EntrypointError(f"{entrypoint}: no such file {target!r} (in {Path.cwd()})")
    path = path.resolve()
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    # The project's root too (as where a worker runs its bundle): `from helpers import x` of a
    # module beside the flows folder imports the same at deploy time as on the worker.
    from engine.code import find_root

    root = str(find_root(path))
    if root not in sys.path:
        sys.path.append(root)

    # Import under the file's own name when that name is free (so the module pickles and reads
    # naturally in tracebacks); a file already imported from this path is reused, like `import`.
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None:
        if _module_file(existing) == path:
            return existing
        name = f"__flowrelay_entrypoint_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}__"
        existing = sys.modules.get(name)
        if existing is not None:
            return existing

    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise EntrypointError(f"{entrypoint}: {target}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        raise EntrypointError(
            f"{entrypoint}: {target}:{exc.lineno}: syntax error: {exc.msg}"
        ) from exc
    except Exception as exc:
        sys.modules.pop(name, None)
        raise EntrypointError(_import_failed(entrypoint, target, exc)) from exc
    return module


def _import_module(target: str, entrypoint: str) -> ModuleType:
    if not all(part.isidentifier() for part in target.split(".")):
        raise EntrypointError(f"{entrypoint!r}: {target!r} is not a module name; {SYNTAX_HINT}")
    # `flowrelay run pkg.flows:etl` should find ./pkg like `python -m` would.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (target == missing or target.startswith(missing + ".")):
            raise EntrypointError(
                f"{entrypoint}: no module named {missing!r} (use a path such as "
                f"'flows/etl.py:flow' for a file)"
            ) from exc
        raise EntrypointError(_import_failed(entrypoint, target, exc)) from exc
    except SyntaxError as exc:
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else target
        raise EntrypointError(f"{entrypoint}: {where}: syntax error: {exc.msg}") from exc
    except Exception as exc:
        raise EntrypointError(_import_failed(entrypoint, target, exc)) from exc


def _import_failed(entrypoint: str, target: str, exc: BaseException) -> str:
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return f"{entrypoint}: importing {target} failed: {type(exc).__name__}" + (
        f": {detail}" if detail else ""
    )


def _get_attribute(module: ModuleType, name: str, entrypoint: str) -> Any:
    obj: Any = module
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            candidates = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, candidates, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            where = getattr(obj, "__name__", type(obj).__name__)
            if isinstance(obj, ModuleType) and obj.__file__:
                where = _display_path(obj.__file__)
            raise EntrypointError(
                f"{entrypoint}: {where} has no attribute {part!r}{hint}"
            ) from None
    return obj


def _module_file(module: ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if file else None


def _display_path(file: str) -> str:
    try:
        return str(Path(file).resolve().relative_to(Path.cwd()))
    except ValueError:
        return file


__all__ = ["load_flow", "load_object"]
