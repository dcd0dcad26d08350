"""The training layout of a PASTA sample: ids, labels, positions and masks, all from one SyncTracker.

The sample is laid out in text order (the training form: each async span right after its promise) and every
token is fed through one `SyncTracker`, so rows and positions are by construction what the decoding engine
computes when it feeds the same tokens step by step.

Labels follow the streams, not the text. Hugging Face shifts labels by one (`labels[j]` is the target of the
logits at slot j - 1), but in text order the slot before a token is not always its predecessor in its own
stream: after `<promise/>` comes the interpreter's `<async>` (untrained), and the main stream's next token
comes after `</async>`. At decoding time that token is sampled from the `<promise/>` slot and nothing is ever
sampled from an `</async>` slot. So each trained token is placed as the target of the slot before it IN ITS
STREAM: `labels[prev + 1] = token`. Every answer token is a target except the interpreter-inserted `<async>`
(the prompt, as in ASPD, is not), so on a sample without promises `labels` is the usual shifted copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import torch

from aspd.pasta.markup import Node, PastaDoc, Promise, Scope, Text
from aspd.pasta.sync import MAIN_STREAM, SyncTracker, Tag
from aspd.pasta.tokens import PastaIds
from aspd.sample import Message, end_of_turn_ids, prompt_ids
from aspd.tokens import text_ids


class PastaKind(IntEnum):
    PROMPT = 0
    TEXT = 1
    SCOPE = 2
    SCOPE_END = 3
    PROMISE = 4
    ASYNC = 5  # inserted by the interpreter: never a target
    ASYNC_END = 6
    EOT = 7


TAG_OF: dict[PastaKind, Tag] = {
    PastaKind.SCOPE: Tag.SCOPE, PastaKind.SCOPE_END: Tag.SCOPE_END, PastaKind.PROMISE: Tag.PROMISE,
    PastaKind.ASYNC: Tag.ASYNC, PastaKind.ASYNC_END: Tag.ASYNC_END,
}
UNTRAINED = frozenset({PastaKind.PROMPT, PastaKind.ASYNC})


@dataclass
class PastaSpan:
    kind: PastaKind
    ids: list[int]


@dataclass
class PastaLayout:
    """A laid-out PASTA sample; duck-types `aspd.layout.Layout` for `aspd.train.data.Collator`."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    kinds: torch.Tensor  # PastaKind per slot
    streams: torch.Tensor  # tracker stream per slot (0 = main, prompt included)
    prev: torch.Tensor  # the slot before this one in its stream, -1 for a stream's first slot
    promise_len: int = 1

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    def feeds(self) -> list[tuple[int, Tag | None]]:
        """(stream, tag) per slot: replaying them through a SyncTracker rebuilds rows and positions."""
        return [(s, TAG_OF.get(PastaKind(k))) for s, k in zip(self.streams.tolist(), self.kinds.tolist(),
                                                               strict=True)]

    def allowed(self, window: int | None = None) -> torch.Tensor:
        """Bool [n, n]: row i = what slot i's stream saw right after feeding it (and the window, if any)."""
        n = len(self)
        # Recomputed on demand (O(n^2) bits, as ASPD's `visibility`) rather than kept per sample in memory.
        tracker = SyncTracker(self.promise_len, capacity=max(n, 1))
        out = torch.zeros(n, n, dtype=torch.bool)
        for i, (stream, tag) in enumerate(self.feeds()):
            tracker.feed(stream, tag)
            out[i, : i + 1] = torch.from_numpy(tracker.row(stream, i + 1))
        if window is not None:
            pos = self.position_ids
            out &= (pos[:, None] - pos[None, :]) < window
        return out


def answer_spans(tokenizer: Any, ids: PastaIds, doc: PastaDoc) -> list[PastaSpan]:
    """The answer's spans in text order; each text piece tokenized on its own."""
    out: list[PastaSpan] = []

    def walk(nodes: Sequence[Node]) -> None:
        for n in nodes:
            if isinstance(n, Text):
                out.append(PastaSpan(PastaKind.TEXT, text_ids(tokenizer, n.text)))
            elif isinstance(n, Scope):
                out.append(PastaSpan(PastaKind.SCOPE, [ids.scope]))
                walk(n.children)
                out.append(PastaSpan(PastaKind.SCOPE_END, [ids.scope_end]))
            else:
                assert isinstance(n, Promise)
                out.append(PastaSpan(PastaKind.PROMISE, [ids.promise]))
                out.append(PastaSpan(PastaKind.ASYNC, [ids.async_]))
                walk(n.children)
                out.append(PastaSpan(PastaKind.ASYNC_END, [ids.async_end]))

    walk(doc.children)
    return out


def pasta_spans(
    tokenizer: Any, ids: PastaIds, messages: Sequence[Message], doc: PastaDoc, *, add_eot: bool = True
) -> list[PastaSpan]:
    """Prompt (the model's chat template, as ASPD samples) + the answer's spans + end of turn."""
    spans = [PastaSpan(PastaKind.PROMPT, prompt_ids(tokenizer, messages)), *answer_spans(tokenizer, ids, doc)]
    if add_eot:
        spans.append(PastaSpan(PastaKind.EOT, end_of_turn_ids(tokenizer)))
    return spans


def layout_spans(spans: Sequence[PastaSpan], *, promise_len: int = 1) -> PastaLayout:
    """Feed spans (text order) through one SyncTracker: positions, streams and stream-wise labels."""
    n = sum(len(s.ids) for s in spans)
    tracker = SyncTracker(promise_len, capacity=max(n, 1))
    flat: list[int] = []
    kinds: list[int] = []
    streams: list[int] = []
    pos: list[int] = []
    prev: list[int] = []
    last: dict[int, int] = {}  # stream -> its latest slot
    stack = [MAIN_STREAM]  # the stream being written, innermost async span last
    fork: int | None = None  # started by the latest <promise/>, begun by the next <async>
    for span in spans:
        for tok in span.ids:
            if span.kind is PastaKind.ASYNC:
                if fork is None:
                    raise ValueError("<async> span without a <promise/> before it")
                stack.append(fork)
                fork = None
            stream = stack[-1]
            fed = tracker.feed(stream, TAG_OF.get(span.kind))
            if fed.fork is not None:
                fork = fed.fork
            if span.kind is PastaKind.ASYNC_END:
                stack.pop()
            slot = len(flat)
            prev.append(last.get(stream, -1))
            last[stream] = slot
            flat.append(tok)
            kinds.append(int(span.kind))
            streams.append(stream)
            pos.append(fed.position)
    labels = [-100] * n
    for j in range(n):
        if PastaKind(kinds[j]) not in UNTRAINED and prev[j] >= 0:
            labels[prev[j] + 1] = flat[j]  # the target of slot prev[j] (HF shifts labels by one)
    t = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return PastaLayout(input_ids=t(flat), labels=t(labels), position_ids=t(pos), kinds=t(kinds),
                       streams=t(streams), prev=t(prev), promise_len=promise_len)


def build_pasta_layout(
    tokenizer: Any,
    ids: PastaIds,
    messages: Sequence[Message],
    doc: PastaDoc,
    *,
    promise_len: int = 1,
    add_eot: bool = True,
) -> PastaLayout:
    """A chat sample (history + PASTA-marked answer) laid out for training."""
    return layout_spans(pasta_spans(tokenizer, ids, messages, doc, add_eot=add_eot), promise_len=promise_len)
