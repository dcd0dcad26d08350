"""Non-invasive parallel data transformation (DESIGN.md section 5): serial answers -> parallel markup."""

from aspd.pipeline.types import Candidate, Judge, Rewriter, Sample, Vote

__all__ = ["Candidate", "Judge", "Rewriter", "Sample", "Vote"]
