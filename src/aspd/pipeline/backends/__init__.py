"""LLM backends for the pipeline, and the accounting they share.

Backends report every request to `current_log()`: the runner gives each sample its own CallLog (through a
context variable, so concurrent samples never mix), which ends up in the sample's `stats` and, summed, in
the run summary. The Rewriter/Judge interfaces stay free of bookkeeping arguments that way.
"""

from __future__ import annotations

from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FAILURE_KINDS", "CallLog", "ChatBackend", "current_log", "use_log"]

# Kinds of failed requests (one per failed attempt), and of replies that were received but unusable.
FAILURE_KINDS = ("timeout", "connection_error", "http_error", "bad_response", "request_failed",
                 "unparseable_reply", "markup_error", "rewriter_error", "judge_error", "sample_error")

MAX_ERRORS = 20  # per sample: enough to diagnose, small enough for one JSON line


@dataclass
class CallLog:
    calls: int = 0  # requests answered by a model (cache hits not included)
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def fail(self, kind: str, message: str) -> None:
        self.failures[kind] += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(f"{kind}: {message}")

    def usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
            self.prompt_tokens += p if isinstance(p, int) else 0
            self.completion_tokens += c if isinstance(c, int) else 0

    def to_dict(self) -> dict[str, Any]:
        return {"llm_calls": self.calls, "cache_hits": self.cache_hits, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "failures": dict(self.failures),
                "errors": list(self.errors)}


_GLOBAL = CallLog()  # catches calls made outside a sample (direct library use)
_CURRENT: ContextVar[CallLog | None] = ContextVar("aspd_pipeline_call_log", default=None)


def current_log() -> CallLog:
    return _CURRENT.get() or _GLOBAL


def use_log(log: CallLog) -> None:
    """Make `log` the current one for this task (and the tasks it starts)."""
    _CURRENT.set(log)


class ChatBackend:
    """Rewriter + Judge on top of one primitive: `complete(messages, judge, count)` -> `count` replies
    (None for a request that failed; the failure is already logged). Subclasses supply `complete`."""

    name: str = "chat"

    def __init__(self, prompts: Any = None):
        from aspd.pipeline.prompts import DEFAULT_PROMPTS

        self.prompts = prompts or DEFAULT_PROMPTS

    async def complete(self, messages: list[dict[str, str]], *, judge: bool, count: int) -> list[str | None]:
        raise NotImplementedError

    async def rewrite(self, sample: Any, n: int) -> list[Any]:
        from aspd.pipeline.parsing import to_candidate
        from aspd.pipeline.prompts import rewrite_messages

        replies = await self.complete(rewrite_messages(self.prompts, sample.messages, sample.answer),
                                      judge=False, count=n)
        # A failed request gives no candidate; the sample's stats say why.
        return [to_candidate(r, self.name, sample.answer) for r in replies if r is not None]

    async def _votes(self, messages: list[dict[str, str]], k: int) -> list[Any]:
        from aspd.pipeline.parsing import parse_verdict
        from aspd.pipeline.types import Vote

        replies = await self.complete(messages, judge=True, count=k)
        return [parse_verdict(r) if r is not None else Vote(None, "request failed (see stats.errors)")
                for r in replies]

    async def independence(self, sample: Any, before: str, group: Any, k: int) -> list[Any]:
        from aspd.pipeline.prompts import independence_messages

        msgs = independence_messages(self.prompts, sample.messages, before, list(group.titles),
                                     [b.visible for b in group.branches])
        return await self._votes(msgs, k)

    async def integrity(self, sample: Any, candidate: Any, k: int) -> list[Any]:
        return await self._compare("integrity", sample, candidate, k)

    async def answer(self, sample: Any, candidate: Any, k: int) -> list[Any]:
        return await self._compare("answer", sample, candidate, k)

    async def _compare(self, kind: str, sample: Any, candidate: Any, k: int) -> list[Any]:
        from aspd.markup import flatten
        from aspd.pipeline.prompts import compare_messages

        # The paper's protocol: judge the candidate flattened back to serial text against the original.
        msgs = compare_messages(self.prompts, kind, sample.messages, sample.answer, flatten(candidate))
        return await self._votes(msgs, k)

    async def aclose(self) -> None:
        return None
