"""Tiny, offline, random models and tokenizers for tests and examples (no download needed)."""

from aspd.testing.tiny import ARCHS, tiny_model, tiny_tokenizer

__all__ = ["ARCHS", "tiny_model", "tiny_tokenizer"]
