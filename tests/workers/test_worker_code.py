"""A worker runs exactly the deployed code: each code version in warm children of its own (a
child never runs two), a bundle fetched once per worker and hash, an installed package of
another version refused with both versions named."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from engine.code import pack, upload

APPEND = '''
import os

from engine import flow


@flow
def append(tag: str) -> str:
    return f"{VERSION} {os.getpid()}"
'''


async def _bundle(service, tmp_path: Path, version: str) -> str:
    root = tmp_path / f"project-{version}"
    root.mkdir()
    (root / "flows.py").write_text(f"VERSION = {version!r}\n" + APPEND)
    bundle = pack(root, max_bytes=10_000_000)
    await upload(service, bundle)
    return bundle.hash


async def test_each_code_version_runs_in_children_of_its_own(service, dispatch, make_worker, tmp_path: Path):
    one, two = await _bundle(service, tmp_path, "v1"), await _bundle(service, tmp_path, "v2")
    worker = make_worker("process", concurrency=1, code_cache_dir=tmp_path / "cache")
    await worker.start()
    runs = []
    for code in (one, one, two, one):
        runs.append(await dispatch("flows.py:append", tag="x", code={"bundle": code}))
        await worker.run_until_idle(timeout=90)

    results = [(await service.read_flow_run(run)).result.split() for run in runs]
    assert [version for version, _ in results] == ["v1", "v1", "v2", "v1"]
    pids = [pid for _, pid in results]
    assert pids[0] == pids[1]  # the warm child of v1 ran both
    assert pids[2] != pids[1] and pids[3] not in (pids[1], pids[2])  # a fresh child per switch
    assert worker.code.fetched == [one, two]  # once per hash
    states = await service.read_flow_run_states(runs[2])
    assert [s.details.code for s in states if s.is_running()] == [two]


async def test_an_installed_package_of_another_version_is_refused(service, dispatch, make_worker, flows):
    have = importlib.metadata.version("pathspec")
    worker = make_worker("inline")
    run_id = await dispatch(f"{flows}:append", tag="p", code={"package": "pathspec", "version": "0.0.1"})
    await worker.run_until_idle(timeout=30)

    run = await service.read_flow_run(run_id)
    assert run.state is not None and run.state.name == "Failed"
    assert f"the deployment runs pathspec 0.0.1; this worker's environment has pathspec {have}" in str(
        run.state.message)
