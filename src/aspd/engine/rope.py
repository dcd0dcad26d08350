"""Re-rotate cached keys to new positions (the same-re ablation): RoPE makes this one rotation by the delta."""

from __future__ import annotations

from typing import Any

import torch


def _inv_freqs(model: Any) -> list[torch.Tensor]:
    """The RoPE inverse frequencies each decoder layer uses (Gemma 3 keeps one set per layer type)."""
    base = model.get_decoder()
    cfg = base.config
    rotary = base.rotary_emb
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    return [getattr(rotary, f"{t}_inv_freq", None) if hasattr(rotary, f"{t}_inv_freq") else rotary.inv_freq
            for t in types]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


@torch.no_grad()
def rerotate_keys(model: Any, cache: Any, slots: torch.Tensor, old_pos: torch.Tensor, new_pos: torch.Tensor) -> None:
    """Move the keys at `slots` of every layer from `old_pos` to `new_pos` in place."""
    if slots.numel() == 0:
        return
    delta = (new_pos - old_pos).float()
    for layer, inv_freq in zip(cache.layers, _inv_freqs(model), strict=True):
        keys = layer.keys  # [B, H, K, D]
        x = keys[:, :, slots].float()
        freqs = delta[:, None] * inv_freq.float().to(delta.device)[None]  # [S, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        keys[:, :, slots] = (x * cos + _rotate_half(x) * sin).to(keys.dtype)
