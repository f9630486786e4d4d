"""Deployment specs from a ``deployments:`` list (a deployments file, or config.yaml), with
``file:line: deployments[2].pool: what is wrong`` errors, and the partial parameter check that
`flowrelay deploy` applies to ``--param``."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from engine.errors import ConfigError
from engine.schemas import Deployment, DeploymentSpec

if TYPE_CHECKING:
    from engine.ports import EngineAPI
    from engine.runtime.flows import Flow
    from engine.settings import Settings


def check_parameters(flow: Flow[..., Any], parameters: Mapping[str, Any], *, what: str) -> None:
    """Validate the given parameters against `flow`'s type hints, one by one: a deployment may
    leave required parameters to each run. `ParameterValidationError` naming every bad key.

    (`Flow.validate_parameters` judges a complete set, so it would refuse the missing ones.)
    """
    import inspect
    import typing

    import pydantic

    from engine.errors import ParameterValidationError

    signature = inspect.signature(flow.fn)
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    named = [name for name, p in signature.parameters.items() if p.kind not in variadic]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    try:
        hints = typing.get_type_hints(flow.fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: those values are not checked
        hints = {}
    problems = []
    for key, value in parameters.items():
        if key not in named:
            if not takes_any:
                problems.append(
                    f"{key}: unknown parameter (the flow takes: {', '.join(named) or 'none'})"
                )
            continue
        try:
            adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(hints.get(key, Any))
        except pydantic.PydanticSchemaGenerationError:
            continue  # an arbitrary class: the worker judges it when the run starts
        try:
            adapter.validate_python(value)
        except pydantic.ValidationError as exc:
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            problems.append(f"{key}: {exc.errors()[0]['msg']} (got {shown})")
    if problems:
        raise ParameterValidationError(f"invalid parameters for {what}: " + "; ".join(problems))


Path = tuple[str | int, ...]


def yaml_lines(text: str) -> dict[Path, int]:
    """The 1-based line of every key and list item of a YAML document, by its path
    (``("deployments", 2, "pool")``), for error messages. Empty if the text is not YAML."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[Path, int] = {}

    def walk(node: yaml.Node, path: Path) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                lines[(*path, str(key.value))] = key.start_mark.line + 1
                walk(value, (*path, str(key.value)))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index))

    if root is not None:
        walk(root, ())
    return lines


def format_path(path: Path) -> str:
    """``("deployments", 2, "pool")`` → ``deployments[2].pool``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def specs_from_items(
    items: Any,
    *,
    source: str,
    lines: Mapping[Path, int] | None = None,
    root: Path = ("deployments",),
) -> list[DeploymentSpec]:
    """Deployment specs from a ``deployments:`` list (a deployments file, or config.yaml), all
    or nothing: each entrypoint is loaded for its flow name (unless ``flow_name`` is given) and
    its parameters checked. `ConfigError` ``source:line: deployments[2].pool: what is wrong``
    (the first problem, and how many more)."""
    from engine.entrypoints import load_flow
    from engine.errors import FlowrelayError

    problems: list[str] = []

    def problem(path: Path, message: str) -> None:
        line = next(
            (lines[path[:n]] for n in range(len(path), 0, -1) if lines and path[:n] in lines), None
        )
        where = f"{source}:{line}" if line is not None else source
        problems.append(f"{where}: {format_path(path)}: {message}")

    if not isinstance(items, list):
        problem(root, "expected a list of deployments (- name: ..., entrypoint: ...)")
        items = []
    specs: list[DeploymentSpec] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        path = (*root, index)
        if not isinstance(item, dict):
            problem(path, "expected a mapping with entrypoint, name, work_pool, ...")
            continue
        entrypoint = item.get("entrypoint")
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            problem(
                (*path, "entrypoint"),
                "required: the flow, as 'path/file.py:flow' or 'package.module:flow'",
            )
            continue
        if "code" in item:
            problem((*path, "code"), "recorded by deploy from the entrypoint (a bundle of the "
                    "project, or the installed package's version): remove it; 'root' sets the "
                    "project folder")
            continue
        flow = None
        flow_name = item.get("flow_name")
        if flow_name is None:
            try:
                flow = load_flow(entrypoint)
            except FlowrelayError as exc:
                problem((*path, "entrypoint"), str(exc))
                continue
            flow_name = flow.name
        try:
            spec = DeploymentSpec.model_validate({**item, "flow_name": flow_name})
        except ValueError as exc:  # pydantic.ValidationError
            for error_path, message in _validation_problems(exc, path):
                problem(error_path, message)
            continue
        if flow is not None:
            try:
                check_parameters(flow, spec.parameters, what=f"flow {flow.name!r}")
            except FlowrelayError as exc:
                problem((*path, "parameters"), str(exc))
                continue
        if spec.full_name in seen:
            problem(
                (*path, "name"),
                f"deployment {spec.full_name!r} is already defined by "
                f"{format_path((*root, seen[spec.full_name]))}",
            )
            continue
        seen[spec.full_name] = index
        specs.append(spec)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(problems[0] + more)
    return specs


def _validation_problems(exc: ValueError, path: Path) -> list[tuple[Path, str]]:
    import re

    import pydantic

    if not isinstance(exc, pydantic.ValidationError):
        return [(path, str(exc))]
    found = []
    for error in exc.errors(include_url=False):
        where: Path = (*path, *error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        # Schedule errors name their item ("schedules[1]: ..."): point at it.
        match = re.match(r"schedules\[(\d+)\]: (.*)", message)
        if match and where[-1] == "schedules":
            where, message = (*where, int(match.group(1))), match.group(2)
        if error["type"] == "extra_forbidden":
            message = (
                "unknown key (expected entrypoint, name, work_pool or pool, parameters, "
                "tags, description, concurrency_limit, schedules, root)"
            )
        found.append((where, message))
    return found


async def register_configured(api: EngineAPI, settings: Settings) -> list[Deployment]:
    """Register the ``deployments:`` of the configuration (at server start). Only new or changed
    deployments are registered, so a restart does not bump every version. `ConfigError` (with
    config.yaml lines where it can) if any is invalid: then none is registered."""
    import asyncio

    from engine.settings import config_path

    if not settings.deployments:
        return []
    file = config_path()
    lines: dict[Path, int] = {}
    if file is not None and file.is_file():
        import yaml

        text = file.read_text(encoding="utf-8")
        with contextlib.suppress(yaml.YAMLError):
            data = yaml.safe_load(text)
            if isinstance(data, dict) and data.get("deployments") == settings.deployments:
                lines = yaml_lines(text)  # only when the file is where the list came from
    from engine.code import pack_specs, upload

    specs = await asyncio.to_thread(
        specs_from_items, settings.deployments, source=str(file or "settings"), lines=lines
    )
    specs, bundles = await asyncio.to_thread(pack_specs, specs)
    current = {d.full_name: d for d in await api.read_deployments()}
    changed = [spec for spec in specs if not _same(spec, current.get(spec.full_name))]
    if not changed:
        return []
    used = {spec.code.get("bundle") for spec in changed if spec.code}
    for bundle in bundles:
        if bundle.hash in used:
            await upload(api, bundle)
    return await api.register_deployments(changed)


def _same(spec: DeploymentSpec, stored: Deployment | None) -> bool:
    if stored is None:
        return False
    fields = set(DeploymentSpec.model_fields) - {"root"}
    return spec.model_dump(include=fields) == stored.model_dump(include=fields)
