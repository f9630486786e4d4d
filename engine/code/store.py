"""Where the server keeps bundles: the ``code_bundles`` table (the default: every server of a
database sees them), or a directory (`code.bundle_dir`, shared by the servers: a volume), with
the table then recording only that a bundle exists and its size.

A bundle is stored only if its bytes hash to its name, so nothing stored can be what it does not
claim to be; chunks are read with ``substr`` in the database, never the whole bundle per chunk.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from engine.code import BUNDLE_PREFIX, bundle_hash, write_atomically
from engine.db import repository as repo
from engine.db.models import CodeBundleRow
from engine.errors import CodeError, ObjectNotFound
from engine.states import utcnow

__all__ = ["check_hash", "exists", "read_chunk", "store"]

_HEX = frozenset("0123456789abcdef")


def check_hash(value: str) -> str:
    """`value` if it is a bundle hash (``sha256:`` + 64 hex digits); `CodeError` otherwise."""
    digest = value.removeprefix(BUNDLE_PREFIX)
    if not value.startswith(BUNDLE_PREFIX) or len(digest) != 64 or not set(digest) <= _HEX:
        raise CodeError(f"{value!r} is not a bundle hash (expected 'sha256:' and 64 hex digits)")
    return value


def _file(directory: str, hash_: str) -> Path:
    return Path(directory).expanduser() / f"{hash_.removeprefix(BUNDLE_PREFIX)}.zip"


async def exists(session: AsyncSession, hash_: str) -> bool:
    return await session.scalar(
        select(CodeBundleRow.size).where(CodeBundleRow.hash == check_hash(hash_))
    ) is not None


async def store(session: AsyncSession, hash_: str, data: bytes, *, directory: str = "",
                max_bytes: int) -> int:
    """Store `data` as bundle `hash_` (idempotent); its size. `CodeError` if the bytes are not
    that bundle or exceed `max_bytes`."""
    check_hash(hash_)
    if len(data) > max_bytes:
        raise CodeError(
            f"bundle {hash_} is {len(data) / 1e6:.1f} MB, over the server's limit of "
            f"{max_bytes / 1e6:g} MB (code.max_bundle_mb)"
        )
    actual = bundle_hash(data)
    if actual != hash_:
        raise CodeError(f"bundle {hash_}: its bytes hash to {actual}; not stored")
    if directory:
        await asyncio.to_thread(_write_file, _file(directory, hash_), data)
    dialect = session.get_bind().dialect.name
    await session.execute(
        repo.insert_ignoring_conflicts(dialect, CodeBundleRow, ["hash"]).values(
            hash=hash_, size=len(data), data=None if directory else data, created=utcnow(),
        )
    )
    return len(data)


async def read_chunk(session: AsyncSession, hash_: str, offset: int, limit: int, *,
                     directory: str = "") -> tuple[int, bytes]:
    """``(size of the bundle, up to `limit` bytes from `offset`)``; `ObjectNotFound` if the
    server has no bundle `hash_`."""
    check_hash(hash_)
    row = (await session.execute(
        select(CodeBundleRow.size, func.substr(CodeBundleRow.data, offset + 1, limit))
        .where(CodeBundleRow.hash == hash_)
    )).first()
    if row is None:
        raise ObjectNotFound(
            f"code bundle {hash_} is not stored on this server (deploy the flow again to upload it)"
        )
    size, chunk = int(row[0]), row[1]
    if chunk is None:  # kept in a directory
        chunk = await asyncio.to_thread(_read_file, directory, hash_, offset, limit)
    return size, bytes(chunk)


def _write_file(path: Path, data: bytes) -> None:
    if not path.is_file():
        write_atomically(path, data)


def _read_file(directory: str, hash_: str, offset: int, limit: int) -> bytes:
    path = _file(directory, hash_) if directory else None
    if path is None or not path.is_file():
        raise ObjectNotFound(
            f"code bundle {hash_} is recorded but its file is missing from code.bundle_dir "
            f"({directory or 'not set'}): deploy the flow again"
        )
    with path.open("rb") as source:
        source.seek(offset)
        return source.read(limit)
