"""Hand layout visibility to a Hugging Face model as explicit 4D masks.

Eager and SDPA attention take an additive [B, 1, Q, K] mask. Models with sliding-window layers (Gemma 3) take
one mask per layer type, so the window is applied on top of the branch structure rather than lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

SUPPORTED_ATTENTION = ("eager", "sdpa")
DECODE_ATTENTION = "aspd_sdpa"  # SDPA, with steps of a few query rows as matrix products (`decode_attention`)
MATRIX_ROWS = (2, 64)  # the query rows `decode_attention` computes itself; SDPA takes the others
MATRIX_SCORES = 1 << 18  # ... and only while rows x keys stays small: its scores are written out, SDPA's are not


class AttentionBackendError(ValueError):
    pass


def check_backend(model: Any) -> None:
    """Refuse attention kernels that cannot take an arbitrary mask: branches would silently see each other."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl not in (*SUPPORTED_ATTENTION, DECODE_ATTENTION):
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
    if model.config._attn_implementation in ("sdpa", DECODE_ATTENTION):
        return None
    return next(model.parameters()).dtype


def decode_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """HF's SDPA attention, except for a step of 2-64 query rows (branches decoding together) over a short span of
    keys, computed here as two matrix products and a softmax, which torch.compile fuses. On the H200, torch's SDPA
    picks a cuDNN kernel for such steps that costs about 4x its one-row kernel (21 against 5 us a layer,
    SmolLM2-135M): most of the extra cost of a parallel step over a serial one (scripts/gpu/profile_step.py). The
    heads of one key/value group are stacked as rows, so K and V are read in place, not repeated per head."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, h, q, d = query.shape
    # No mask means SDPA's own causal rule (HF's generate on the same model): left to SDPA.
    plain = (module.training or attention_mask is None or not MATRIX_ROWS[0] <= q <= MATRIX_ROWS[1]
             or q * key.shape[2] > MATRIX_SCORES or key.shape[-1] != d
             or any(kwargs.get(k) is not None for k in ("position_bias", "softcap", "s_aux", "sinks")))
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    kvh = key.shape[1]
    g = h // kvh
    scores = torch.matmul(query.reshape(b, kvh, g * q, d), key.transpose(2, 3)).view(b, kvh, g, q, -1)
    scores = scores.float() * (scaling if scaling is not None else d**-0.5)
    m = attention_mask[:, :, None]  # [B, 1, 1, Q, K]: shared by every head
    scores = scores.masked_fill(~m, torch.finfo(scores.dtype).min) if m.dtype == torch.bool else scores + m
    probs = torch.softmax(scores, dim=-1).to(value.dtype).view(b, kvh, g * q, -1)
    out = torch.matmul(probs, value).view(b, h, q, d)
    return out.transpose(1, 2).contiguous(), None


def use_decode_attention(model: Any) -> bool:
    """Switch a model on SDPA to `decode_attention` (the same attention: the fast engine does it where it compiles
    its step on CUDA). Returns whether the model uses it now."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    impl = model.config._attn_implementation
    if impl == DECODE_ATTENTION:
        return True
    if impl != "sdpa":
        return False
    AttentionInterface.register(DECODE_ATTENTION, decode_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(DECODE_ATTENTION, sdpa_mask)  # masks HF builds itself (its own generate)
    model.set_attn_implementation(DECODE_ATTENTION)
    return model.config._attn_implementation == DECODE_ATTENTION


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
