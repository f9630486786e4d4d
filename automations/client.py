"""Reaching the rule engine from the CLI and scripts: in process (embedded mode) or over the
broker's RPC (`flowrelay server`). Every method returns plain JSON values.

    from automations.client import automations_client
    api = await automations_client()
    await api.apply_automations([{"source": "rules.yaml", "text": text}])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import FlowrelayError

__all__ = [
    "apply_automations",
    "automations_client",
    "delete_automation",
    "pause_automation",
    "read_automation",
    "read_automations",
    "resume_automation",
]


class _Remote:
    def __init__(self, remote: Any) -> None:
        self._remote = remote

    def __getattr__(self, name: str) -> Any:
        from automations.service import AUTOMATION_COMMANDS

        if name not in AUTOMATION_COMMANDS:
            raise AttributeError(name)

        async def method(**kwargs: Any) -> Any:
            return await self._remote.call(name, **kwargs)

        return method


class _Local:
    def __init__(self, service: Any) -> None:
        self._service = service

    def __getattr__(self, name: str) -> Any:
        from pydantic_core import to_jsonable_python

        method = getattr(self._service, name)

        async def call(**kwargs: Any) -> Any:
            return to_jsonable_python(await method(**kwargs))

        return call


async def automations_client() -> Any:
    """The automations API of this process's engine (call on the engine loop: `embedded.call`)."""
    from engine.remote import RemoteEngine
    from engine.runtime import embedded

    api = await embedded._get_api()
    if isinstance(api, RemoteEngine):
        return _Remote(api)
    server = embedded._server
    if server is None or getattr(server, "automations", None) is None:
        raise FlowrelayError(
            "the rule engine is not running in this process (automations.enabled is false)"
        )
    return _Local(server.automations)


# --- the Python API: the CLI's automation commands as functions ----------------------------------
# Each works called plainly from sync code and awaited from async code, like run_deployment.
def _sync_compatible(fn: Any) -> Any:
    from engine.runtime.deployments import sync_compatible

    return sync_compatible(fn)


async def _on_engine(command: str, **kwargs: Any) -> Any:
    from engine.runtime import embedded

    async def go(_: Any) -> Any:
        api = await automations_client()
        return await getattr(api, command)(**kwargs)

    return await embedded.call(go)


@_sync_compatible
async def apply_automations(*paths: str | Path, yaml: str | None = None) -> list[str]:
    """Install or update the automations of YAML files (or folders of them) and/or `yaml` text,
    all or none (`AutomationFileError` lists every problem as file:line:column). Returns their
    names."""
    import asyncio

    documents = await asyncio.to_thread(_documents, paths, yaml)
    names: list[str] = await _on_engine("apply_automations", documents=documents)
    return names


def _documents(paths: tuple[str | Path, ...], yaml: str | None) -> list[dict[str, str]]:
    documents = [{"source": str(p), "text": p.read_text(encoding="utf-8")} for p in _files(paths)]
    if yaml is not None:
        documents.append({"source": "<yaml>", "text": yaml})
    return documents


def _files(paths: tuple[str | Path, ...]) -> list[Path]:
    out: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            out += sorted(p for p in item.iterdir() if p.suffix in (".yaml", ".yml"))
        elif item.exists():
            out.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file")
    return out


@_sync_compatible
async def read_automations() -> list[dict[str, Any]]:
    """Every automation: name, enabled, definition, counters."""
    rows: list[dict[str, Any]] = await _on_engine("read_automations")
    return rows


@_sync_compatible
async def read_automation(name: str) -> dict[str, Any]:
    """One automation with its open windows (`pending`) and last firings."""
    row: dict[str, Any] = await _on_engine("read_automation", name=name)
    return row


@_sync_compatible
async def pause_automation(name: str) -> dict[str, Any]:
    row: dict[str, Any] = await _on_engine("set_automation_enabled", name=name, enabled=False)
    return row


@_sync_compatible
async def resume_automation(name: str) -> dict[str, Any]:
    row: dict[str, Any] = await _on_engine("set_automation_enabled", name=name, enabled=True)
    return row


@_sync_compatible
async def delete_automation(name: str) -> None:
    await _on_engine("delete_automation", name=name)
