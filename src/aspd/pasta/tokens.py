"""The five PASTA tag tokens, added to a tokenizer (and model) beside the six ASPD control tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aspd.tokens import add_special_tokens


@dataclass(frozen=True)
class PastaTags:
    scope: str = "<scope>"
    scope_end: str = "</scope>"
    async_: str = "<async>"
    async_end: str = "</async>"
    promise: str = "<promise/>"

    def all(self) -> tuple[str, ...]:
        return (self.scope, self.scope_end, self.async_, self.async_end, self.promise)


PASTA_TAGS = PastaTags()


@dataclass(frozen=True)
class PastaIds:
    """Token ids of the PASTA tags in one tokenizer."""

    scope: int
    scope_end: int
    async_: int
    async_end: int
    promise: int

    def all(self) -> tuple[int, ...]:
        return (self.scope, self.scope_end, self.async_, self.async_end, self.promise)


def add_pasta_tokens(tokenizer: Any, model: Any | None = None) -> PastaIds:
    """Add the PASTA tags as special tokens (rows at the mean embedding, as for the ASPD tokens). Idempotent."""
    return PastaIds(*add_special_tokens(tokenizer, model, PASTA_TAGS.all()))
