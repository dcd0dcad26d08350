"""Per-stream sampling: temperature, top-k, top-p, repetition penalty, each stream with its own generator."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy (exact argmax). The paper samples with 0.7 / top-k 20 / top-p 0.8."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


PAPER_SAMPLING = SamplingParams(temperature=0.7, top_k=20, top_p=0.8)


def stream_generator(seed: int, stream: tuple[int, int], device: torch.device) -> torch.Generator:
    """A generator per stream: main is (-1, -1), branch b of group g is (g, b). Same seed, same draws."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + (stream[0] + 1) * 10_007 + (stream[1] + 1)) % (2**63))
    return g


def apply_repetition_penalty(logits: torch.Tensor, history: Sequence[torch.Tensor], penalty: float) -> torch.Tensor:
    """The CTRL-style penalty HF uses: divide positive, multiply negative logits of tokens already seen."""
    if penalty == 1.0:
        return logits
    out = logits.clone()
    for row, seen in enumerate(history):
        if seen.numel():
            idx = seen.unique()
            vals = out[row, idx]
            out[row, idx] = torch.where(vals > 0, vals / penalty, vals * penalty)
    return out


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    generators: Sequence[torch.Generator] | None = None,
    history: Sequence[torch.Tensor] | None = None,
    banned: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next token per row of logits [N, V]. `banned` [N, V] bool masks tokens the stream may not emit."""
    logits = logits.float()
    if history is not None:
        logits = apply_repetition_penalty(logits, history, params.repetition_penalty)
    if banned is not None:
        logits = logits.masked_fill(banned, float("-inf"))
    if params.greedy:
        return logits.argmax(-1)
    logits = logits / params.temperature
    if params.top_k > 0:
        k = min(params.top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > params.top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    return torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=generators[i]) for i in range(len(probs))]).squeeze(-1)
