"""Hand layout visibility to a Hugging Face model as explicit 4D masks.

Eager and SDPA attention take an additive [B, 1, Q, K] mask. Models with sliding-window layers (Gemma 3) take
one mask per layer type, so the window is applied on top of the branch structure rather than lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

SUPPORTED_ATTENTION = ("eager", "sdpa")


class AttentionBackendError(ValueError):
    pass


def check_backend(model: Any) -> None:
    """Refuse attention kernels that cannot take an arbitrary mask: branches would silently see each other."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl not in SUPPORTED_ATTENTION:
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
    if model.config._attn_implementation == "sdpa":
        return None
    return next(model.parameters()).dtype


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
