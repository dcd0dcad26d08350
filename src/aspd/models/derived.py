"""Derived models: a registered base model plus a small artifact (a LoRA adapter and the control-token rows).

An artifact folder holds `adapter_config.json`, `adapter_model.safetensors` (bf16) and `aspd.json` (how it was
trained, and the registry name of its base). Fetching a derived model fetches the base, applies the artifact
(the same control-token init as training, then the adapter, merged) and caches the merged folder like any
other model, so the engine loads it with no peft at run time.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).parent / "artifacts"
ADAPTER = "adapter_model.safetensors"
ARTIFACT_FILES = ("adapter_config.json", ADAPTER, "aspd.json")


def artifact_dir(artifact: str) -> Path:
    """A folder name under aspd/models/artifacts, or a path."""
    p = Path(artifact).expanduser()
    return p if p.is_absolute() or p.exists() else ARTIFACTS / artifact


def artifact_sha256(folder: Path) -> str:
    h = hashlib.sha256()
    with open(folder / ADAPTER, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pack(run_dir: str | Path, out_dir: str | Path, *, base: str | None = None) -> dict[str, Any]:
    """Turn an `aspd train --lora` output into an artifact: adapter tensors in bf16, paths made portable.

    `base` overrides the registry name recorded as the base model. Returns {files, bytes, sha256}.
    """
    import torch
    from safetensors.torch import load_file, save_file

    run, out = Path(run_dir), Path(out_dir)
    meta = json.loads((run / "aspd.json").read_text())
    if not meta.get("lora"):
        raise ValueError(f"{run} is not a LoRA run; only adapters can be packed into artifacts")
    base = base or meta["base_model"]
    out.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(run / ADAPTER))
    # bf16 halves the size; the update is merged in fp32 at fetch time, so only the factors are rounded.
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()},
              str(out / ADAPTER))
    cfg = json.loads((run / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = base
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    meta["base_model"] = base
    meta["train"] = {k: v for k, v in meta.get("train", {}).items() if k not in ("data", "output", "model")}
    (out / "aspd.json").write_text(json.dumps(meta, indent=2) + "\n")
    if (run / "loss_history.json").exists():
        shutil.copy(run / "loss_history.json", out / "loss_history.json")
    return {"files": sorted(p.name for p in out.iterdir()),
            "bytes": sum(p.stat().st_size for p in out.iterdir()), "sha256": artifact_sha256(out)}


def build(artifact: str, out: Path, *, base_folder: Path, dtype: str) -> dict[str, Any]:
    """Apply an artifact to the base folder and save the merged model into `out`; returns manifest info."""
    import torch

    from aspd.loading import add_trained_tokens, load_adapter_model, load_tokenizer

    src = artifact_dir(artifact)
    missing = [f for f in ARTIFACT_FILES if not (src / f).is_file()]
    if missing:
        raise FileNotFoundError(f"artifact {src} lacks {', '.join(missing)}")
    model = load_adapter_model(src, base_folder, getattr(torch, dtype), "sdpa")
    tokenizer = load_tokenizer(base_folder)
    add_trained_tokens(tokenizer, None, src)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = json.loads((src / "aspd.json").read_text())
    meta["lora"] = False  # merged: loads as a plain ASPD model
    meta["artifact"] = artifact
    (out / "aspd.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {"artifact_sha256": artifact_sha256(src), "base_model": meta["base_model"]}
