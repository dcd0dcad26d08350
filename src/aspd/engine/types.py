"""The engine's shared data types: limits, events, stats and the finished answer.

They live apart from the decoders (`aspd.engine.core`, `.pasta`, `.sot`, `.batch`) so that every decoder and
the server import them from here, not from one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from aspd.engine.sampling import MAIN_STREAM, Stream
from aspd.markup import Document, MarkupError, render


@dataclass(frozen=True)
class Limits:
    max_new_tokens: int = 512  # sampled tokens, all streams together
    max_branches: int = 8  # per group; extra titles are dropped
    max_branch_tokens: int = 256  # per branch, its prefix and <|/branch|> included
    max_groups: int = 8
    max_title_tokens: int = 24


@dataclass(frozen=True)
class Event:
    """One step of output. kind: token | open (a group starts) | close (a group ends) | done."""

    kind: str
    stream: Stream = MAIN_STREAM
    token: int | None = None
    text: str = ""
    titles: tuple[str, ...] = ()


@dataclass
class Stats:
    tokens: int = 0  # sampled tokens (engine-inserted prefixes and <|/para|> excluded)
    parallel_tokens: int = 0  # sampled inside branches
    forwards: int = 0
    seconds: float = 0.0
    parallel_seconds: float = 0.0
    prefill_tokens: int = 0
    branches: list[int] = field(default_factory=list)  # branch count of each group
    visible_tokens: int = 0  # the visible answer re-tokenized (control tokens excluded)

    @property
    def groups(self) -> int:
        return len(self.branches)

    @property
    def dp(self) -> float:
        return self.parallel_tokens / self.tokens if self.tokens else 0.0

    @property
    def abn(self) -> float:
        return sum(self.branches) / len(self.branches) if self.branches else 0.0

    @property
    def tps(self) -> float:
        return self.visible_tokens / self.seconds if self.seconds else 0.0

    @property
    def parallel_tps(self) -> float:
        return self.parallel_tokens / self.parallel_seconds if self.parallel_seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens, "visible_tokens": self.visible_tokens, "parallel_tokens": self.parallel_tokens,
            "seconds": round(self.seconds, 4), "parallel_seconds": round(self.parallel_seconds, 4),
            "tps": round(self.tps, 2), "parallel_tps": round(self.parallel_tps, 2), "dp": round(self.dp, 4),
            "abn": round(self.abn, 3), "groups": self.groups, "forwards": self.forwards,
            "prefill_tokens": self.prefill_tokens,
        }


@dataclass
class Generation:
    """One answer. `doc`, `text` and `raw` describe the same answer (see `aspd.engine.answer`): `raw` is every
    token sampled or fed, in flattened order; `doc` is what they read as, and `text == flatten(doc)`. Title
    markup that opened no group (followed by text, or pending at the end of turn, the budget or the context)
    is text: in `doc` and `text` without its control tokens, in `raw` as sampled.

    finish_reason: `stop` when the model ended its turn; `length` when the token budget or the context cut the
    answer (also when it ended a branch early, or left no room for the group the pending titles announce).
    """

    doc: Document  # the answer as markup
    text: str  # visible answer (flattened); never holds a control token
    raw: str  # token-level text, control tokens included, in flattened order
    stats: Stats
    finish_reason: str  # stop | length
    answer_ids: list[int]  # flattened order
    # Debug/verification: each fed slot as (id, position, group, branch), and its logits when recorded.
    slots: list[tuple[int, int, int, int]] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)
    markup: str | None = None  # the answer's own markup when it is not ASPD markup (PASTA's training form)

    def markup_text(self) -> str | None:
        """The answer as markup text: its own form if it has one, else the document rendered (None if invalid)."""
        if self.markup is not None:
            return self.markup
        try:
            return render(self.doc)
        except MarkupError:
            return None


