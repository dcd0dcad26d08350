"""Incremental detokenization: text deltas for a growing list of ids, by `tokenizers`' streaming decoder."""

from __future__ import annotations

from typing import Any

from tokenizers.decoders import DecodeStream


class Detokenizer:
    """Text deltas per token; a character split across tokens comes out with the token that completes it.

    `tokenizers.decoders.DecodeStream` decodes a short window of recent ids (as vLLM does), so streaming stays
    linear in answer length while a token that merges with its predecessor (byte-level BPE, SentencePiece
    spaces) still renders correctly.
    """

    def __init__(self, tokenizer: Any):
        self.backend = tokenizer.backend_tokenizer  # the fast tokenizer's Rust core
        self.stream = DecodeStream(skip_special_tokens=False)
        self.held: list[int] = []  # pushed since the last delta: an incomplete character

    def push(self, token: int) -> str:
        self.held.append(token)
        text = self.stream.step(self.backend, token)
        if text is None:
            return ""
        self.held = []
        return text

    def flush(self) -> str:
        """Whatever was held back (as the full decode renders it), once no more tokens will come; what is
        pushed next starts afresh."""
        text = self.backend.decode(self.held, skip_special_tokens=False) if self.held else ""
        self.stream, self.held = DecodeStream(skip_special_tokens=False), []
        return text
