"""Acceptance filter for PASTA annotations (after the PASTA paper, section 5.1).

An annotated answer is kept when two figures say the annotation is both harmless and worth it:

(a) changed share: over the answer's content tokens (text, not tags), how often the model's greedy next-token
    prediction differs between the PASTA layout (each token predicted from the slot before it in its own
    stream, seeing only its synchronous prefix, at its PASTA position) and the plain answer read serially
    (the same per-piece token ids in `strip` order, causal mask, contiguous positions);
(b) predicted latency gain: 1 - steps_pasta / steps_serial, where steps_serial is the number of plain answer
    tokens and steps_pasta comes from a lockstep simulation: every live stream writes one token per step; a
    fork's first token comes in the step after its `<promise/>` (with the main stream's next token); a
    `</scope>` comes one step after the latest `</async>` written inside its scope, and never earlier than
    the next step of its own stream.

Accepted when changed < max_changed and gain >= min_gain (the paper's 20% / 20% by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from aspd.attention import forward_layout
from aspd.pasta.layout import PastaKind, PastaLayout, build_pasta_layout
from aspd.pasta.markup import PastaDoc
from aspd.pasta.tokens import PastaIds
from aspd.sample import Message

DEFAULT_MAX_CHANGED = 0.2
DEFAULT_MIN_GAIN = 0.2


@dataclass(frozen=True)
class FilterResult:
    changed: float  # share of content tokens whose greedy prediction changes under PASTA
    gain: float  # 1 - steps_pasta / steps_serial
    tokens: int  # content tokens scored (= steps_serial)
    steps_pasta: int
    accepted: bool

    @property
    def steps_serial(self) -> int:
        return self.tokens

    def as_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "gain": self.gain, "tokens": self.tokens,
                "steps_pasta": self.steps_pasta, "accepted": self.accepted}


def lockstep_steps(layout: PastaLayout) -> int:
    """Decoding steps of the answer (prompt and end of turn excluded) when streams run in lockstep."""
    kinds = [PastaKind(k) for k in layout.kinds.tolist()]
    streams = layout.streams.tolist()
    last: dict[int, int] = {0: 0}  # stream -> step of its latest token
    open_scopes: list[int] = []  # per scope open in text order: latest </async> step inside it so far
    end = 0
    promised = 0  # step of the latest <promise/>: its <async> follows it in text order
    for kind, s in zip(kinds, streams, strict=True):
        if kind in (PastaKind.PROMPT, PastaKind.EOT):
            continue
        if kind is PastaKind.ASYNC:
            last[s] = promised  # inserted, not written: the span's first token comes the step after its promise
            continue
        step = last[s] + 1
        if kind is PastaKind.SCOPE:
            open_scopes.append(0)
        elif kind is PastaKind.SCOPE_END:
            step = max(step, open_scopes.pop() + 1)
        elif kind is PastaKind.ASYNC_END:
            open_scopes[:] = [max(x, step) for x in open_scopes]
        elif kind is PastaKind.PROMISE:
            promised = step
        last[s] = step
        end = max(end, step)
    return end


def plain_ids(layout: PastaLayout) -> tuple[list[int], list[int]]:
    """The serial sequence (prompt + content tokens in text order = strip order) and each token's PASTA slot."""
    keep = [i for i, k in enumerate(layout.kinds.tolist()) if k in (PastaKind.PROMPT, PastaKind.TEXT)]
    return layout.input_ids[keep].tolist(), keep


@torch.inference_mode()
def changed_share(model: Any, layout: PastaLayout) -> tuple[float, int]:
    """(share of content tokens whose argmax prediction differs PASTA vs serial, number of content tokens)."""
    ids, slots = plain_ids(layout)
    kinds = layout.kinds.tolist()
    content = [q for q, i in enumerate(slots) if kinds[i] == PastaKind.TEXT]
    if not content:
        return 0.0, 0
    device = next(model.parameters()).device
    pasta = forward_layout(model, layout)
    serial = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0]
    by_stream = layout.prev[[slots[q] for q in content]].to(device)  # predicted from the stream predecessor
    in_plain = torch.tensor([q - 1 for q in content], device=device)
    differ = pasta[by_stream].argmax(-1) != serial[in_plain].argmax(-1)
    return float(differ.float().mean()), len(content)


def evaluate(
    model: Any,
    tokenizer: Any,
    ids: PastaIds,
    messages: Sequence[Message],
    doc: PastaDoc,
    *,
    max_changed: float = DEFAULT_MAX_CHANGED,
    min_gain: float = DEFAULT_MIN_GAIN,
) -> FilterResult:
    """Both figures for one annotated answer, and the verdict. The model needs rows for the PASTA tags."""
    layout = build_pasta_layout(tokenizer, ids, messages, doc, add_eot=False)
    changed, tokens = changed_share(model, layout)
    steps = lockstep_steps(layout)
    gain = 1.0 - steps / tokens if tokens else 0.0
    return FilterResult(changed, gain, tokens, steps, changed < max_changed and gain >= min_gain)
