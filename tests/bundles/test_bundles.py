"""Deployed code (`engine.code`, `engine.code.store`, `workers.code`): what a project packs to,
what the server stores and serves in chunks, and how a worker fetches, verifies and caches it —
on SQLite and PostgreSQL, with the server's own engine service as the API."""

from __future__ import annotations

import base64
import importlib.metadata
import os
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.code import ALWAYS_IGNORED, bundle_hash, describe_code, find_root, pack, upload
from engine.errors import CodeError, ConfigError, ObjectNotFound
from engine.service import EngineService
from workers.code import ENV_KEY, CodeCache, check_package


def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "pkg").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname='p'\n")
    (root / "flows.py").write_text("from engine import flow\n\n@flow\ndef f():\n    return 1\n")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    for ignored in (".venv/lib/x.py", "__pycache__/flows.cpython-312.pyc", "node_modules/a.js",
                    "out/big.bin", ".git/HEAD"):
        (root / ignored).parent.mkdir(parents=True, exist_ok=True)
        (root / ignored).write_text("ignored")
    (root / ".gitignore").write_text("out/\n")
    return root


def names(data: bytes, tmp_path: Path) -> list[str]:
    path = tmp_path / "b.zip"
    path.write_bytes(data)
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def test_a_project_packs_deterministically_honouring_its_gitignore(tmp_path: Path) -> None:
    root = project(tmp_path)
    first = pack(root, max_bytes=10_000_000)
    (root / "flows.py").touch()  # a newer mtime alone does not change the bundle
    again = pack(root, max_bytes=10_000_000)
    assert first.hash == again.hash == bundle_hash(first.data)
    assert sorted(names(first.data, tmp_path)) == [
        ".gitignore", "flows.py", "pkg/__init__.py", "pyproject.toml", "run.sh"]
    assert ".venv/" in ALWAYS_IGNORED and first.files == 5
    with zipfile.ZipFile(root.parent / "b.zip") as archive:
        assert (archive.getinfo("run.sh").external_attr >> 16) & 0o111  # still executable
    (root / "flows.py").write_text("changed = True\n")
    assert pack(root, max_bytes=10_000_000).hash != first.hash


def test_a_project_over_the_limit_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    root = project(tmp_path)
    (root / "data.bin").write_bytes(os.urandom(3_000_000))  # incompressible
    with pytest.raises(ConfigError) as caught:
        pack(root, max_bytes=1_000_000)
    message = str(caught.value)
    assert "over 1 MB once packed" in message and "data.bin" in message
    assert ".gitignore" in message and "--root" in message and "code.max_bundle_mb" in message


def test_the_root_is_the_nearest_project_folder_and_the_entrypoint_is_relative_to_it(tmp_path: Path) -> None:
    root = project(tmp_path)
    (root / "flows" / "sub").mkdir(parents=True)
    deep = root / "flows" / "sub" / "etl.py"
    deep.write_text("from engine import flow\n\n@flow\ndef etl():\n    pass\n")
    assert find_root(deep) == root.resolve()
    loose = tmp_path / "loose" / "one.py"
    loose.parent.mkdir()
    loose.write_text("")
    assert find_root(loose) == loose.parent.resolve()

    code, entrypoint, bundle = describe_code(f"{deep}:etl")
    assert entrypoint == "flows/sub/etl.py:etl" and bundle is not None
    assert code == {"bundle": bundle.hash, "bytes": len(bundle.data), "files": bundle.files,
                    "root": str(root.resolve())}
    _, narrow, small = describe_code(f"{deep}:etl", root=root / "flows")
    assert narrow == "sub/etl.py:etl" and small is not None and small.files == 1

    with pytest.raises(ConfigError, match="is not inside the project root"):
        describe_code(f"{deep}:etl", root=tmp_path / "loose")
    (root / ".gitignore").write_text("flows/\n")
    with pytest.raises(ConfigError, match="is ignored by the project's .gitignore"):
        describe_code(f"{deep}:etl")


def test_a_module_entrypoint_records_its_installed_distribution() -> None:
    code, entrypoint, bundle = describe_code("pathspec.util:normalize_file")
    assert bundle is None and entrypoint == "pathspec.util:normalize_file"
    assert code == {"package": "pathspec", "version": importlib.metadata.version("pathspec"),
                    "module": "pathspec.util"}
    assert describe_code("not_installed_anywhere.mod:f")[0] is None  # loaded as found
    check_package(code)
    with pytest.raises(CodeError, match=r"the deployment runs pathspec 0\.0\.1; this worker's environment has"):
        check_package({**code, "version": "0.0.1"})
    with pytest.raises(CodeError, match="not installed where this worker runs"):
        check_package({"package": "no-such-dist-anywhere", "version": "1"})


@pytest.fixture
async def service(db_url: str) -> AsyncIterator[EngineService]:
    svc = await EngineService.open(db_url)
    try:
        yield svc
    finally:
        await svc.close()


async def test_the_server_stores_only_verified_bundles_and_serves_them_in_chunks(
    service: EngineService, tmp_path: Path
) -> None:
    bundle = pack(project(tmp_path), max_bytes=10_000_000)
    assert not await service.has_code_bundle(bundle.hash)
    await upload(service, bundle)
    await upload(service, bundle)  # once per hash: the second is a no-op
    assert await service.has_code_bundle(bundle.hash)

    parts, offset = [], 0
    while offset < len(bundle.data):
        chunk = await service.read_code_bundle(bundle.hash, offset, 100)
        assert chunk.size == len(bundle.data)
        parts.append(base64.b64decode(chunk.data))
        offset += len(parts[-1])
    assert b"".join(parts) == bundle.data

    other = "sha256:" + "0" * 64
    with pytest.raises(CodeError, match="its bytes hash to"):
        await service.store_code_bundle(other, base64.b64encode(b"not that").decode())
    with pytest.raises(CodeError, match="not base64"):
        await service.store_code_bundle(other, "***")
    with pytest.raises(CodeError, match="is not a bundle hash"):
        await service.has_code_bundle("md5:abc")
    with pytest.raises(ObjectNotFound, match="deploy the flow again"):
        await service.read_code_bundle(other)
    service.max_bundle_bytes = 10
    with pytest.raises(CodeError, match="over the server's limit"):
        await service.store_code_bundle(bundle_hash(b"x" * 11), base64.b64encode(b"x" * 11).decode())


async def test_a_bundle_directory_keeps_the_bytes_out_of_the_database(
    service: EngineService, tmp_path: Path
) -> None:
    service.code_bundle_dir = str(tmp_path / "bundles")
    bundle = pack(project(tmp_path), max_bytes=10_000_000)
    await upload(service, bundle)
    stored = tmp_path / "bundles" / f"{bundle.hash.removeprefix('sha256:')}.zip"
    assert stored.read_bytes() == bundle.data
    chunk = await service.read_code_bundle(bundle.hash, 10, 20)
    assert base64.b64decode(chunk.data) == bundle.data[10:30]


async def test_a_worker_fetches_once_verifies_and_refetches_a_tampered_cache(
    service: EngineService, tmp_path: Path
) -> None:
    bundle = pack(project(tmp_path), max_bytes=10_000_000)
    await upload(service, bundle)
    cache = CodeCache(service, tmp_path / "cache", chunk_bytes=64)
    try:
        ready = await cache.prepare({"bundle": bundle.hash})
        again = await cache.prepare({"bundle": bundle.hash})
        assert ready == again and ready.key == bundle.hash and cache.fetched == [bundle.hash]
        assert ready.root is not None and (ready.root / "flows.py").is_file()
        assert (ready.root / "run.sh").stat().st_mode & 0o111
        assert (await cache.prepare(None)).key == ENV_KEY
    finally:
        cache.close()
    assert ready.root is not None and not ready.root.exists()  # its unpacked copy goes with it

    cached = tmp_path / "cache" / f"{bundle.hash.removeprefix('sha256:')}.zip"
    cached.write_bytes(b"tampered" + cached.read_bytes())
    fresh = CodeCache(service, tmp_path / "cache")
    try:
        await fresh.prepare({"bundle": bundle.hash})
        assert fresh.fetched == [bundle.hash] and cached.read_bytes() == bundle.data
        with pytest.raises(ObjectNotFound):
            await fresh.prepare({"bundle": "sha256:" + "1" * 64})
        with pytest.raises(CodeError, match="this worker's environment has"):
            await fresh.prepare({"package": "pathspec", "version": "0.0.1"})
    finally:
        fresh.close()
