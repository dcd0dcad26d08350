"""Hand layout visibility to a Hugging Face model as explicit 4D masks.

Eager and SDPA attention take an additive [B, 1, Q, K] mask. Models with sliding-window layers (Gemma 3) take
one mask per layer type, so the window is applied on top of the branch structure rather than lost.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

SUPPORTED_ATTENTION = ("eager", "sdpa")
# SDPA with grouped-query attention packed for short queries (`use_packed_sdpa`): what the decoding engines run.
PACKED_SDPA = "aspd_packed_sdpa"
ENV_PACK = "ASPD_PACK_GQA"  # 0: leave the model on HF's SDPA (to compare)
# Decode steps, group openings and batched steps (buckets up to 256 rows). Packing repeats the mask rows instead of
# the keys and values, which stops paying for queries as long as a prefill's or a training row's.
_PACK_MAX_QUERY = 256


class AttentionBackendError(ValueError):
    pass


def check_backend(model: Any) -> None:
    """Refuse attention kernels that cannot take an arbitrary mask: branches would silently see each other."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl not in (*SUPPORTED_ATTENTION, PACKED_SDPA):
        raise AttentionBackendError(
            f"attention implementation {impl!r} cannot take the branch mask; load the model with "
            f"attn_implementation='sdpa' (or 'eager')"
        )


def layer_windows(config: Any) -> dict[str, int | None]:
    """Mask kinds the model's layers need: {'full_attention': None} or also {'sliding_attention': W}."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    types = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    window = getattr(cfg, "sliding_window", None)
    out: dict[str, int | None] = {}
    for t in types:
        if t == "sliding_attention":
            if not window:
                raise ValueError("config declares sliding_attention layers but no sliding_window")
            out[t] = int(window)
        elif t == "full_attention":
            out[t] = None
        else:
            raise ValueError(f"unsupported attention layer type {t!r}")
    if not getattr(cfg, "layer_types", None) and window and getattr(cfg, "use_sliding_window", False):
        out = {"full_attention": int(window)}  # every layer slides (e.g. Mistral-style configs)
    return out


def mask_dtype(model: Any) -> torch.dtype | None:
    """SDPA takes boolean masks whatever the compute dtype (autocast included); eager needs additive ones."""
    check_backend(model)
    if model.config._attn_implementation in ("sdpa", PACKED_SDPA):
        return None
    return next(model.parameters()).dtype


def packed_sdpa_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """HF's SDPA attention, except for a short query over a grouped-query cache with a 4D mask: the query heads
    that share a key/value head are stacked along the query axis (the mask rows repeated to match), so SDPA reads
    each cached key and value once. HF copies the whole cache once per query head instead (`repeat_kv`) for every
    query longer than one token, which is every parallel step, and for every step under torch.compile."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = int(getattr(module, "num_key_value_groups", 1))
    b, heads, q, d = query.shape
    if (groups == 1 or q > _PACK_MAX_QUERY or dropout or attention_mask is None or attention_mask.dim() != 4
            or attention_mask.shape[1] != 1 or key.shape[1] * groups != heads
            or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    # Query head h reads key/value head h // groups (repeat_kv's order), so heads of one group are adjacent.
    packed = query.reshape(b, key.shape[1], groups * q, d)
    n = key.shape[2]
    mask = attention_mask[:, :, None].expand(b, 1, groups, q, n).reshape(b, 1, groups * q, n)  # a view for q = 1
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(b, heads, q, d).transpose(1, 2).contiguous(), None


def use_packed_sdpa(model: Any) -> bool:
    """Switch a model on HF's SDPA to `packed_sdpa_attention` (the same function for anything but short masked
    queries with grouped-query heads); True if switched. $ASPD_PACK_GQA=0 leaves it alone."""
    if os.environ.get(ENV_PACK, "1").strip() == "0":
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    configs = _configs(model, "sdpa")
    if not configs:
        return False
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)  # for 2D masks (prefill by HF generate) as with SDPA
    for c in configs:
        c._attn_implementation = PACKED_SDPA
    return True


@contextmanager
def stock_sdpa(model: Any) -> Iterator[None]:
    """HF's own SDPA for the block: references and baselines must not run the engines' attention."""
    configs = _configs(model, PACKED_SDPA)
    for c in configs:
        c._attn_implementation = "sdpa"
    try:
        yield
    finally:
        for c in configs:
            c._attn_implementation = PACKED_SDPA


def _configs(model: Any, impl: str) -> list[Any]:
    """The model's config and its text config (one object for text models) where attention is `impl`."""
    found = [model.config]
    if hasattr(model.config, "get_text_config") and model.config.get_text_config() is not model.config:
        found.append(model.config.get_text_config())
    return [c for c in found if getattr(c, "_attn_implementation", None) == impl]


def model_mask(
    windows: dict[str, int | None],
    allowed: Callable[[int | None], torch.Tensor],
    dtype: torch.dtype | None,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Build the mask argument from `allowed(window) -> bool [..., Q, K]`: boolean if dtype is None, else additive.

    Returns one [B, 1, Q, K] tensor when every layer is full attention, else a dict keyed by layer type.
    """
    masks = {}
    for kind, window in windows.items():
        a = allowed(window)
        if a.dim() == 2:
            a = a[None]
        if dtype is None:
            m = a
        else:
            m = torch.zeros(a.shape, dtype=dtype, device=a.device).masked_fill_(~a, torch.finfo(dtype).min)
        masks[kind] = m[:, None]
    if list(masks) == ["full_attention"]:
        return masks["full_attention"]
    return masks


def forward_layout(model: Any, layout: Any) -> torch.Tensor:
    """One-shot forward of a whole laid-out sample; returns logits [T, V]. The reference for the engine."""
    device = next(model.parameters()).device
    mask = model_mask(layer_windows(model.config), lambda w: layout.allowed(w).to(device), mask_dtype(model))
    out = model(
        input_ids=layout.input_ids[None].to(device),
        position_ids=layout.position_ids[None].to(device),
        attention_mask=mask,
        use_cache=False,
    )
    return out.logits[0]
