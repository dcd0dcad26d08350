"""The interfaces every pipeline backend implements (rewriters, judges) and the data they exchange.

Kept small and stable on purpose: the rule-based rewriter (`rules.py`) and the likelihood judge
(`likelihood.py`) are written against exactly these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import aspd.markup

__all__ = ["Candidate", "Judge", "Rewriter", "Sample", "Vote"]


@dataclass
class Sample:  # one input line
    id: str
    messages: list[dict[str, str]]  # the conversation before the answer (system/user/assistant turns), question last
    answer: str  # the target model's own serial answer
    record: dict[str, Any]  # the whole input object, kept verbatim in the output


@dataclass
class Candidate:  # one rewrite reply
    raw: str  # the reply text as received
    has_parallel: bool | None  # what the rewriter said (None: could not tell)
    markup: str | None  # marked-up answer text, or None
    source: str  # backend name, e.g. "openai:qwen", "rules:lists"
    problems: tuple[str, ...] = ()  # why an unusable reply is unusable, when the rewriter already knows


@dataclass
class Vote:
    verdict: bool | None  # None = unparseable reply
    reason: str
    raw: str = ""


class Rewriter(Protocol):
    name: str

    async def rewrite(self, sample: Sample, n: int) -> list[Candidate]: ...


class Judge(Protocol):
    name: str

    # Each returns k votes; a judge that cannot do a kind raises NotImplementedError (the stage is then
    # skipped and the output says so).
    async def independence(self, sample: Sample, before: str, group: aspd.markup.Group, k: int) -> list[Vote]: ...

    async def integrity(self, sample: Sample, candidate: aspd.markup.Document, k: int) -> list[Vote]: ...

    async def answer(self, sample: Sample, candidate: aspd.markup.Document, k: int) -> list[Vote]: ...
