"""The worker's side of deployed code (`engine.code`): fetch a bundle by its hash from the
server over the broker, in chunks, verify it, cache it on disk, and unpack it for this worker's
children; check an installed distribution's version.

    cache = CodeCache(api, directory)
    where = await cache.prepare(dispatch.code)   # once per worker and hash; then a dict lookup
    where.key        # what a warm child is keyed by: the bundle's hash, or "env"
    where.root       # the unpacked project (None: code installed in this environment)

The cache keeps each bundle as ``<hex>.zip``, named by its hash. A cached zip is verified (hashed)
the first time this worker uses it: a file that does not match — tampered with, truncated by a
full disk — is fetched again. Each worker unpacks its own copy (``unpacked/<hex>-<pid>``), removed
when it stops (and by the next worker on the machine if it was killed), so two workers never
race on one folder and a run never sees another process's half-written files.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.broker.errors import BrokerError
from engine.code import BUNDLE_PREFIX, write_atomically
from engine.errors import CodeError, EngineUnavailable
from engine.logging import get_logger

__all__ = ["ENV_KEY", "CodeCache", "Prepared", "check_package"]

#: The key of children that run code installed in the worker's environment.
ENV_KEY = "env"

log = get_logger("workers.code")


@dataclass(frozen=True)
class Prepared:
    key: str
    root: Path | None = None


def check_package(code: dict[str, Any]) -> None:
    """`CodeError` unless this environment has the distribution version the deployment
    recorded."""
    dist, wanted = str(code.get("package")), code.get("version")
    try:
        have = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise CodeError(
            f"the deployment runs {dist} {wanted}, which is not installed where this worker runs: "
            f"install {dist}=={wanted} in the worker's environment"
        ) from None
    if wanted is not None and have != wanted:
        raise CodeError(
            f"the deployment runs {dist} {wanted}; this worker's environment has {dist} {have}: "
            f"install {dist}=={wanted} here, or deploy again from an environment with {have}"
        )


class CodeCache:
    """Bundles fetched, verified and unpacked for one worker process."""

    def __init__(
        self,
        api: Any,
        directory: Path,
        *,
        chunk_bytes: int = 512 * 1024,
        call_timeout: float = 30.0,
        outage_timeout: float = 300.0,
    ) -> None:
        self.api = api
        self.directory = directory.expanduser()
        self.chunk_bytes = chunk_bytes
        self.call_timeout = call_timeout
        self.outage_timeout = outage_timeout
        self._ready: dict[str, asyncio.Future[Path]] = {}
        self._unpacked: list[Path] = []
        #: bundles fetched from the server (not found verified in the cache), for tests and logs
        self.fetched: list[str] = []

    @property
    def loaded(self) -> list[str]:
        """Hashes this worker has ready."""
        return sorted(h for h, f in self._ready.items() if f.done() and not f.exception())

    async def prepare(self, code: dict[str, Any] | None) -> Prepared:
        """Make the dispatch's code ready to run: a bundle fetched and unpacked (once per hash),
        an installed package's version checked. `CodeError` / `ObjectNotFound` say why not."""
        if not code or not code.get("bundle"):
            if code and code.get("package"):
                check_package(code)
            return Prepared(ENV_KEY)
        hash_ = str(code["bundle"])
        ready = self._ready.get(hash_)
        if ready is None or (ready.done() and ready.exception() is not None):
            ready = self._ready[hash_] = asyncio.ensure_future(self._load(hash_))
        return Prepared(hash_, await asyncio.shield(ready))

    async def _load(self, hash_: str) -> Path:
        digest = hash_.removeprefix(BUNDLE_PREFIX)
        if not hash_.startswith(BUNDLE_PREFIX) or len(digest) != 64:
            raise CodeError(f"{hash_!r} is not a bundle hash")
        self.directory.mkdir(parents=True, exist_ok=True)
        zip_path = self.directory / f"{digest}.zip"
        if not await asyncio.to_thread(_matches, zip_path, digest):
            if zip_path.exists():
                log.warning("cached bundle does not match its hash (changed on disk): fetching it again",
                            bundle=hash_, path=str(zip_path))
            data = await self._fetch(hash_)
            await asyncio.to_thread(write_atomically, zip_path, data)
            self.fetched.append(hash_)
        target = self.directory / "unpacked" / f"{digest}-{os.getpid()}"
        await asyncio.to_thread(_unpack, zip_path, target)
        self._unpacked.append(target)
        log.info("bundle ready", bundle=hash_, root=str(target))
        return target

    async def _fetch(self, hash_: str) -> bytes:
        """The bundle from the server, chunk by chunk, verified; transient failures (the broker
        or the database unavailable) retried for up to `outage_timeout`."""
        began = time.monotonic()
        parts: list[bytes] = []
        offset, size = 0, None
        pause = 0.5
        while size is None or offset < size:
            try:
                async with asyncio.timeout(self.call_timeout):
                    chunk = await self.api.read_code_bundle(hash_, offset, self.chunk_bytes)
            except (TimeoutError, OSError, EngineUnavailable, BrokerError) as exc:
                if time.monotonic() - began + pause > self.outage_timeout:
                    raise
                log.warning("fetching a bundle failed; trying again", bundle=hash_, retry_in=pause,
                            error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            data = base64.b64decode(_field(chunk, "data"))
            size = int(_field(chunk, "size"))
            if not data and offset < size:
                raise CodeError(f"bundle {hash_}: the server sent no data at offset {offset} of {size}")
            parts.append(data)
            offset += len(data)
        blob = b"".join(parts)
        actual = BUNDLE_PREFIX + hashlib.sha256(blob).hexdigest()
        if actual != hash_:
            raise CodeError(f"bundle {hash_}: the bytes fetched hash to {actual}; refusing to run them")
        log.info("bundle fetched", bundle=hash_, bytes=len(blob),
                 seconds=round(time.monotonic() - began, 3))
        return blob

    def sweep(self) -> None:
        """Remove unpacked copies left by workers of this machine that are gone (kill -9)."""
        folder = self.directory / "unpacked"
        if not folder.is_dir():
            return
        for path in folder.iterdir():
            pid = path.name.rpartition("-")[2]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        """Remove this worker's unpacked copies (the verified zips stay cached)."""
        for path in self._unpacked:
            shutil.rmtree(path, ignore_errors=True)
        self._unpacked.clear()
        for ready in self._ready.values():
            ready.cancel()


def _field(chunk: Any, name: str) -> Any:
    return chunk[name] if isinstance(chunk, dict) else getattr(chunk, name)


def _matches(path: Path, digest: str) -> bool:
    if not path.is_file():
        return False
    sha = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest() == digest


def _unpack(zip_path: Path, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for info in archive.infolist():
                name = Path(info.filename)
                if name.is_absolute() or ".." in name.parts:
                    raise CodeError(f"bundle {zip_path.name}: unsafe path {info.filename!r}")
                archive.extract(info, tmp)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    with contextlib.suppress(OSError):
                        os.chmod(tmp / name, mode)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
