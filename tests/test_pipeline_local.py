"""The transform's local backend through continuous batching (aspd.engine.batch): concurrent requests share
forwards, and their greedy replies (and token counts) are those of the one-at-a-time `generate` path."""

from __future__ import annotations

import asyncio
from typing import Any

import torch

from aspd.pipeline.backends import CallLog, use_log
from aspd.pipeline.backends.local import LocalBackend
from aspd.testing import tiny_model, tiny_tokenizer

QUESTIONS = ["Give three tips for staying healthy.", "Hi", "Compare Python and Rust.", "What is two plus two?"]
# (question, judge, count): rewrites and votes of different lengths, several rows each, all in flight at once.
REQUESTS = [(0, False, 3), (1, True, 2), (2, False, 1), (3, True, 3), (0, True, 2)]


def model_and_tokenizer() -> tuple[Any, Any]:
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    with torch.no_grad():  # a likelier end of turn, so that rows stop at different lengths
        model.lm_head.weight[tok.eos_token_id] *= 4
    return model, tok


def backend(model: Any, tok: Any, **kw: Any) -> LocalBackend:
    return LocalBackend("tiny", model=model, tokenizer=tok, temperature=kw.pop("temperature", 0.0),
                        judge_temperature=kw.pop("judge_temperature", 0.0), max_new_tokens=24,
                        judge_max_new_tokens=10, batch_size=2, **kw)


def messages(q: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTIONS[q]}]


async def one(be: LocalBackend, q: int, judge: bool, count: int) -> tuple[list[str | None], dict[str, Any]]:
    log = CallLog()
    use_log(log)  # this task's own log (a task copies the context it starts in)
    replies = await be.complete(messages(q), judge=judge, count=count)
    return replies, log.to_dict()


async def concurrently(be: LocalBackend, reqs: list[tuple[int, bool, int]]) -> list[Any]:
    try:
        return await asyncio.gather(*(one(be, *r) for r in reqs))
    finally:
        await be.aclose()


def test_batched_greedy_replies_equal_one_at_a_time() -> None:
    model, tok = model_and_tokenizer()
    # One at a time first: the batched backend gives the model rows for the engine's control tokens.
    alone = [asyncio.run(concurrently(backend(model, tok, batching=False), [r]))[0] for r in REQUESTS]
    be = backend(model, tok, max_batch=6)
    together = asyncio.run(concurrently(be, REQUESTS))
    assert together == alone
    # Some rows stopped before their cap: the cut at the end of turn (and its count) is compared too.
    assert any(stats["completion_tokens"] < count * (10 if judge else 24)
               for (_, judge, count), (_, stats) in zip(REQUESTS, alone, strict=True))
    sampled = sum(stats["completion_tokens"] for _, stats in alone)
    # Shared forwards: far fewer steps than tokens, with the rows of different requests in each.
    assert be._batch.steps < sampled / 3 and not be._batch.busy


def test_sampled_rows_differ_and_repeat() -> None:
    model, tok = model_and_tokenizer()
    reqs = [(0, False, 3), (1, True, 3)]
    first = asyncio.run(concurrently(backend(model, tok, temperature=1.0, judge_temperature=1.0), reqs))
    again = asyncio.run(concurrently(backend(model, tok, temperature=1.0, judge_temperature=1.0), reqs))
    assert first == again  # seeded per request and row, whatever else is in flight
    for replies, stats in first:
        assert len(set(replies)) == len(replies) and stats["llm_calls"] == len(replies)


def test_too_long_prompt_fails_alone() -> None:
    """A prompt past the context fails its own call (logged); the others in flight are answered."""
    model, tok = model_and_tokenizer()
    be = backend(model, tok)

    async def go() -> list[Any]:
        long = asyncio.create_task(be.complete([{"role": "user", "content": "word " * 600}], judge=False, count=2))
        short = asyncio.create_task(one(be, 1, False, 2))
        try:
            return [await long, *(await short)]
        finally:
            await be.aclose()

    log = CallLog()
    use_log(log)
    long, short, stats = asyncio.run(go())
    assert long == [None, None] and log.failures == {"request_failed": 1} and "no room" in log.errors[0]
    assert all(isinstance(r, str) for r in short) and stats["failures"] == {}


def test_cancelled_call_leaves_the_engine_usable() -> None:
    model, tok = model_and_tokenizer()
    be = backend(model, tok)

    async def go() -> Any:
        try:
            task = asyncio.create_task(be.complete(messages(0), judge=False, count=3))
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return await one(be, 1, True, 2)
        finally:
            await be.aclose()

    replies, stats = asyncio.run(go())
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies) and stats["llm_calls"] == 2
    assert not be._batch.busy


def test_cli_turns_batching_off() -> None:
    from aspd.cli import build_parser
    from aspd.pipeline.cli import build_backends
    from aspd.pipeline.prompts import DEFAULT_PROMPTS

    def rewriter(*extra: str) -> LocalBackend:
        argv = ["transform", "--input", "in.jsonl", "--output", "out.jsonl", "--rewriter", "local",
                "--local-model", "some-model", *extra]
        return build_backends(build_parser("transform").parse_args(argv), DEFAULT_PROMPTS)[0]

    assert rewriter().batching is True and rewriter("--no-batching").batching is False
