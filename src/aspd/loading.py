"""Load a causal LM and its tokenizer from a registry name or a local Hugging Face folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from aspd.attention import SUPPORTED_ATTENTION, AttentionBackendError


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """'auto' means bf16 on a GPU that supports it, fp32 elsewhere (CPU bf16 matmuls are slow)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float16": torch.float16, "fp16": torch.float16}[dtype]


def model_folder(name_or_path: str | Path) -> Path:
    """A local folder as is; otherwise a registry name, fetched (and converted) on first use."""
    p = Path(name_or_path).expanduser()
    if (p / "config.json").exists() or (p / "adapter_config.json").exists():
        return p
    from aspd.models.fetch import resolve

    return Path(resolve(str(name_or_path)))


def read_aspd_config(name_or_path: str | Path) -> dict[str, Any]:
    """The training settings saved next to an ASPD model (empty for a plain model)."""
    f = model_folder(name_or_path) / "aspd.json"
    return json.loads(f.read_text()) if f.exists() else {}


def load_tokenizer(name_or_path: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_folder(name_or_path))


def load_model(
    name_or_path: str | Path,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = "auto",
    attn: str = "sdpa",
) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer). Attention must accept explicit 4D masks (sdpa or eager)."""
    from transformers import AutoModelForCausalLM

    if attn not in SUPPORTED_ATTENTION:
        raise AttentionBackendError(
            f"attention implementation {attn!r} cannot take the branch mask; use one of {SUPPORTED_ATTENTION}"
        )
    device = device or default_device()
    folder = model_folder(name_or_path)
    torch_dtype = resolve_dtype(dtype, device)
    tokenizer = load_tokenizer(folder)
    if (folder / "adapter_config.json").exists():
        model = _load_adapter(folder, tokenizer, torch_dtype, attn)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, attn_implementation=attn)
    return model.to(device).eval(), tokenizer


def _load_adapter(folder: Path, tokenizer: Any, dtype: torch.dtype, attn: str) -> Any:
    meta_file = folder / "aspd.json"
    if meta_file.exists():
        base = json.loads(meta_file.read_text())["base_model"]
    else:
        base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    return load_adapter_model(folder, model_folder(base), dtype, attn)


def add_trained_tokens(tokenizer: Any, model: Any | None, folder: Path) -> None:
    """The special tokens a run in `folder` added, in training order: the ASPD six, then PASTA's five."""
    from aspd.tokens import add_control_tokens

    add_control_tokens(tokenizer, model)
    meta = folder / "aspd.json"
    if meta.exists() and json.loads(meta.read_text()).get("format") == "pasta":
        from aspd.pasta.tokens import add_pasta_tokens

        add_pasta_tokens(tokenizer, model)


def load_adapter_model(folder: Path, base_folder: Path, dtype: torch.dtype, attn: str) -> Any:
    """A LoRA run: base weights + the same special-token init as training + adapter, merged for speed."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # Merge in fp32, then cast: merging in bf16 would round the low-rank update away.
    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32, attn_implementation=attn)
    add_trained_tokens(load_tokenizer(base_folder), model, folder)
    model = PeftModel.from_pretrained(model, folder).merge_and_unload()
    return model.to(dtype)
