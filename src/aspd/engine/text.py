"""Incremental detokenization: text deltas for a growing list of ids, at O(1) decode work per token."""

from __future__ import annotations

from typing import Any


class Detokenizer:
    """Decodes a short window of recent ids (as vLLM does), holding back incomplete multi-byte characters.

    Decoding a window rather than the whole list keeps streaming linear in answer length, while a token that
    merges with its predecessor (byte-level BPE, SentencePiece spaces) still renders correctly.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the window decoded for context
        self.read = 0  # ids before this have been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def push(self, token: int) -> str:
        self.ids.append(token)
        shown = self._decode(self.ids[self.prefix : self.read])
        text = self._decode(self.ids[self.prefix :])
        if len(text) <= len(shown) or text.endswith("\ufffd"):  # a character split across tokens: wait
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(shown) :]

    def flush(self) -> str:
        """Whatever was held back, once no more tokens will come."""
        shown = self._decode(self.ids[self.prefix : self.read])
        text = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return text[len(shown) :]
