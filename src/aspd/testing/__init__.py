"""Tiny, offline, random models and tokenizers for tests and examples (no download needed)."""

from aspd.testing.tiny import ARCHS, grouping_model, tiny_model, tiny_tokenizer

__all__ = ["ARCHS", "grouping_model", "tiny_model", "tiny_tokenizer"]
