"""Code that travels with a deployment: what `flowrelay deploy` packs, the server stores and a
worker fetches, verifies, caches and imports (README "Deploying code to workers").

A deployment of a flow *file* (``flows/etl.py:etl``) records a **bundle**: the flow's project
packed into a zip whose name is its content's hash (``sha256:<hex>``). The project's root is the
nearest folder holding ``pyproject.toml`` or ``.git`` above the file (else the file's folder), or
one the user names; its ``.gitignore`` is honoured, as are ``.git``, ``__pycache__``, virtual
environments and ``node_modules``. The entrypoint is stored relative to that root. The same files
give the same hash (names sorted, timestamps fixed), so a redeploy of unchanged code reuses the
stored bundle and the workers' warm children.

A deployment of an *installed* module (``package.module:flow``) records the distribution that
provides it and its version (``{"package": "etl-jobs", "version": "1.4.0"}``); a worker whose
environment has another version refuses the run with both versions named.

    code, entrypoint, bundle = describe_code("flows/etl.py:etl")   # at deploy time
    await upload(api, bundle)                                       # once per hash
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from engine.errors import ConfigError

__all__ = [
    "BUNDLE_PREFIX",
    "Bundle",
    "bundle_hash",
    "describe_code",
    "find_root",
    "pack",
    "pack_specs",
    "upload",
    "write_atomically",
]

BUNDLE_PREFIX = "sha256:"

#: Never packed, whatever .gitignore says.
ALWAYS_IGNORED = (
    ".git/", "__pycache__/", "*.pyc", "*.pyo", ".venv/", "venv/", ".tox/", ".nox/",
    "node_modules/", ".mypy_cache/", ".ruff_cache/", ".pytest_cache/", ".flowrelay/",
    "*.egg-info/", ".DS_Store",
)
#: A SQLite database's companions (excluded with it).
_SIDECARS = ("-wal", "-shm", "-journal")
#: The files' timestamp in a bundle (zip cannot store earlier): the hash depends on content only.
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Bundle:
    """A packed project: its zip bytes and content hash."""

    hash: str
    data: bytes
    root: Path
    files: int

    def code(self) -> dict[str, Any]:
        """What the deployment records (`DeploymentSpec.code`)."""
        return {"bundle": self.hash, "bytes": len(self.data), "files": self.files,
                "root": str(self.root)}


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all (a temporary file beside it, then renamed):
    a reader never sees half a bundle."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def bundle_hash(data: bytes) -> str:
    return BUNDLE_PREFIX + hashlib.sha256(data).hexdigest()


def find_root(file: Path) -> Path:
    """The project of `file`: the nearest folder above it with ``pyproject.toml`` or ``.git``,
    else the file's own folder."""
    folder = file.resolve().parent
    for candidate in (folder, *folder.parents):
        if (candidate / "pyproject.toml").is_file() or (candidate / ".git").exists():
            return candidate
    return folder


def _ignore_spec(root: Path) -> Any:
    import pathspec

    lines = list(ALWAYS_IGNORED)
    for name in (".gitignore", ".flowrelayignore"):
        path = root / name
        if path.is_file():
            lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines)


def pack(root: Path, *, max_bytes: int, exclude: tuple[Path, ...] = ()) -> Bundle:
    """Pack the files under `root` (ignore rules applied, and the folders in `exclude`: the
    engine's own home and caches when they sit inside the project) into a deterministic zip;
    `ConfigError` saying what to do when it exceeds `max_bytes`."""
    root = root.resolve()
    if not root.is_dir():
        raise ConfigError(f"project root {root}: not a folder")
    spec = _ignore_spec(root)
    skipped = {path.resolve() for path in exclude}
    skipped |= {Path(f"{path}{suffix}") for path in skipped for suffix in _SIDECARS}
    files: list[tuple[str, Path]] = []
    for folder, dirs, names in os.walk(root):
        rel_folder = Path(folder).relative_to(root)
        kept_dirs = []
        for name in sorted(dirs):
            rel = (rel_folder / name).as_posix() + "/"
            path = Path(folder, name)
            if not spec.match_file(rel) and not path.is_symlink() and path.resolve() not in skipped:
                kept_dirs.append(name)
        dirs[:] = kept_dirs
        for name in names:
            rel = (rel_folder / name).as_posix()
            path = Path(folder, name)
            if spec.match_file(rel) or not path.is_file() or path.resolve() in skipped:
                continue
            files.append((rel, path))
    files.sort()
    buffer = io.BytesIO()
    raw = 0
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for rel, path in files:
            data = path.read_bytes()
            raw += len(data)
            info = zipfile.ZipInfo(rel, date_time=_EPOCH)
            mode = path.stat().st_mode
            executable = 0o755 if mode & stat.S_IXUSR else 0o644
            info.external_attr = (stat.S_IFREG | executable) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
            if buffer.tell() > max_bytes:
                raise _too_large(root, buffer.tell(), max_bytes, files)
    data = buffer.getvalue()
    if len(data) > max_bytes:
        raise _too_large(root, len(data), max_bytes, files)
    return Bundle(hash=bundle_hash(data), data=data, root=root, files=len(files))


def _too_large(root: Path, size: int, limit: int, files: list[tuple[str, Path]]) -> ConfigError:
    biggest = sorted(files, key=lambda item: item[1].stat().st_size, reverse=True)[:3]
    named = ", ".join(f"{rel} ({item.stat().st_size / 1e6:.1f} MB)" for rel, item in biggest)
    return ConfigError(
        f"project {root} is over {limit / 1e6:g} MB once packed (already {size / 1e6:.1f} MB; "
        f"largest files: {named}): list what the flow does not need in .gitignore or "
        ".flowrelayignore, give a smaller --root, or raise code.max_bundle_mb"
    )


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def describe_code(
    entrypoint: str, *, root: str | Path | None = None, max_bytes: int | None = None,
    packed: dict[Path, Bundle] | None = None,
) -> tuple[dict[str, Any] | None, str, Bundle | None]:
    """What a deployment of `entrypoint` records: ``(code, entrypoint as stored, bundle)``.

    A file entrypoint is packed (`root`: the project's folder, default `find_root`) and stored
    relative to the root; a module entrypoint records its distribution's version (or None when
    no installed distribution provides it: it is loaded as the worker finds it). `packed`: the
    bundles already made by this deploy, by root (a file of ten deployments packs once)."""
    target, sep, name = entrypoint.strip().rpartition(":")
    if not sep:
        return None, entrypoint, None
    if not _is_file_target(target):
        if root is not None:
            raise ConfigError(
                f"{entrypoint}: --root applies to a file entrypoint (path/file.py:flow); a module "
                "entrypoint runs the code installed where the worker runs"
            )
        return _package_code(target), entrypoint, None
    file = Path(target).expanduser().resolve()
    project = Path(root).expanduser().resolve() if root is not None else find_root(file)
    try:
        relative = PurePosixPath(file.relative_to(project).as_posix())
    except ValueError:
        raise ConfigError(
            f"{entrypoint}: the flow's file {file} is not inside the project root {project}: "
            "give a --root that contains it"
        ) from None
    from engine.settings import get_settings

    settings = get_settings()
    if max_bytes is None:
        max_bytes = int(settings.code.max_bundle_mb * 1e6)
    bundle = (packed or {}).get(project)
    if bundle is None:
        bundle = pack(project, max_bytes=max_bytes, exclude=_engine_files(settings))
        if packed is not None:
            packed[project] = bundle
    if relative.as_posix() not in _names(bundle):
        raise ConfigError(
            f"{entrypoint}: {relative} is ignored by the project's .gitignore or .flowrelayignore "
            f"(root {project}): the flow's own file must be packed"
        )
    return bundle.code(), f"{relative.as_posix()}:{name}", bundle


def _engine_files(settings: Any) -> tuple[Path, ...]:
    """The engine's own files, never packed even inside a project: its home, code caches, the
    configuration in effect (it may hold passwords) and a SQLite database (a live file would
    change the hash of every deploy)."""
    from sqlalchemy import make_url

    from engine.settings import config_path

    own = [settings.home, *(Path(d) for d in (settings.code.cache_dir, settings.code.bundle_dir) if d)]
    config = config_path()
    if config is not None:
        own.append(config)
    url = make_url(settings.database.url)
    if url.get_backend_name() == "sqlite" and url.database and not url.database.startswith(":"):
        own.append(Path(url.database))
    return tuple(path.expanduser() for path in own)


def _names(bundle: Bundle) -> set[str]:
    with zipfile.ZipFile(io.BytesIO(bundle.data)) as archive:
        return set(archive.namelist())


def _package_code(module: str) -> dict[str, Any] | None:
    top = module.split(".")[0]
    dists = importlib.metadata.packages_distributions().get(top) or []
    if not dists:
        return None
    dist = dists[0]
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    return {"package": dist, "version": version, "module": module}


def pack_specs(specs: list[Any]) -> tuple[list[Any], list[Bundle]]:
    """Deployment specs as they are registered: each file entrypoint packed (its project at the
    spec's `root`, or found) and made relative to its bundle; module entrypoints with their
    distribution's version. Returns the specs and the distinct bundles to upload."""
    prepared, bundles = [], {}
    packed: dict[Path, Bundle] = {}
    for spec in specs:
        if spec.code is not None:  # already described (registered again as it is)
            prepared.append(spec)
            continue
        try:
            code, entrypoint, bundle = describe_code(spec.entrypoint, root=spec.root, packed=packed)
        except ConfigError as exc:
            raise ConfigError(f"deployment {spec.full_name}: {exc}") from None
        prepared.append(spec.model_copy(update={"code": code, "entrypoint": entrypoint, "root": None}))
        if bundle is not None:
            bundles[bundle.hash] = bundle
    return prepared, list(bundles.values())


async def upload(api: Any, bundle: Bundle) -> None:
    """Store `bundle` on the server unless it already has it (content-addressed: once per
    hash)."""
    import base64

    if await api.has_code_bundle(bundle.hash):
        return
    await api.store_code_bundle(bundle.hash, base64.b64encode(bundle.data).decode("ascii"))
