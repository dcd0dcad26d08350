"""The six control tokens of the model token format (DESIGN.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecialTokens:
    title: str = "<|title|>"
    title_end: str = "<|/title|>"
    branch: str = "<|branch|>"
    branch_end: str = "<|/branch|>"
    para: str = "<|para|>"
    para_end: str = "<|/para|>"

    def all(self) -> tuple[str, ...]:
        return (self.title, self.title_end, self.branch, self.branch_end, self.para, self.para_end)


DEFAULT_TOKENS = SpecialTokens()
