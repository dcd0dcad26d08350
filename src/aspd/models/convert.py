"""Converting a GGUF file, once, into a Hugging Face safetensors folder (loading a GGUF costs 30-80 s, a
safetensors folder a second)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm import tqdm

from aspd.models.cache import FetchError, PathLike

DTYPES: dict[str, str] = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


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
