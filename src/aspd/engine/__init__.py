"""Hybrid serial-parallel decoding in one sequence and one KV cache."""

from aspd.engine.core import Event, Generation, HybridEngine, Limits, Stats
from aspd.engine.sampling import PAPER_SAMPLING, SamplingParams

__all__ = ["PAPER_SAMPLING", "Event", "Generation", "HybridEngine", "Limits", "SamplingParams", "Stats"]
