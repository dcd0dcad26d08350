"""Incremental detokenization and the reading-order text view of a parallel answer."""

from __future__ import annotations

from typing import Any


class Detokenizer:
    """Turns a growing list of ids into text deltas, holding back incomplete multi-byte characters."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = 0  # characters already emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            return ""
        delta = text[self.sent :]
        self.sent = len(text)
        return delta

    def flush(self) -> str:
        """Whatever was held back, once no more tokens will come."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        delta = text[self.sent :]
        self.sent = len(text)
        return delta
