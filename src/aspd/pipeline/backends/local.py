"""Rewriter and Judge with a local Transformers model, through its own chat template.

The same prompts as the OpenAI-compatible backend. By default every reply is one request of aspd's continuous
batching (`aspd.engine.batch.BatchEngine`, serial mode): the N candidates (or K votes) of a request and the
requests of every sample in flight share one forward per step, each row with its own seed. One worker thread
owns the model (load, submit, step), so the event loop keeps serving the other samples meanwhile. Greedy replies
are those of `generate`; sampled ones are drawn from each row's own generator instead of torch's global one.

`batching=False` (or a model the engine cannot run) is the previous path: one request at a time (a lock),
its rows one padded `generate` call, `batch_size` rows at most.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aspd.pipeline.backends import ChatBackend, current_log

__all__ = ["LocalBackend"]

log = logging.getLogger("aspd.pipeline.local")


@dataclass(frozen=True)
class _Plan:
    """One request's prompt and decoding settings, the same for both paths."""

    ids: list[int]
    stops: frozenset[int]
    temperature: float
    max_new: int
    seed: int


class LocalBackend(ChatBackend):
    def __init__(
        self,
        model_name_or_path: str | Path,
        *,
        prompts: Any = None,
        device: str | None = None,
        dtype: str = "auto",
        temperature: float = 0.7,
        judge_temperature: float = 0.7,
        top_p: float | None = None,
        max_new_tokens: int = 2048,
        judge_max_new_tokens: int = 256,
        batch_size: int = 8,
        seed: int = 0,
        model: Any = None,
        tokenizer: Any = None,
        name: str | None = None,
        batching: bool = True,
        max_batch: int = 32,
    ):
        super().__init__(prompts)
        self.source = str(model_name_or_path)
        self.name = name or f"local:{Path(self.source).name or self.source}"
        self.device, self.dtype = device, dtype
        self.temperature, self.judge_temperature, self.top_p = temperature, judge_temperature, top_p
        self.max_new_tokens, self.judge_max_new_tokens = max_new_tokens, judge_max_new_tokens
        self.batch_size = max(1, batch_size)  # rows of one generate call (batching off)
        self.max_batch = max(1, max_batch)  # rows stepped together (batching on)
        self.seed = seed
        self.batching = batching
        self.model, self.tokenizer = model, tokenizer  # given: used as is (tests); else loaded on first use
        self._lock: asyncio.Lock | None = None
        self._pool: ThreadPoolExecutor | None = None  # the one thread that touches the model when batching
        self._batch: Any = None  # BatchEngine, made on first use
        self._pending: list[Any] = []  # BatchRequests the driver submits at its next step boundary
        self._driver: asyncio.Task[None] | None = None
        self._waiting: set[asyncio.Future[None]] = set()
        self._error: BaseException | None = None  # why the driver stopped, if it broke

    def _load(self) -> None:
        if self.model is None or self.tokenizer is None:
            from aspd.loading import load_model

            self.model, self.tokenizer = load_model(self.source, device=self.device, dtype=self.dtype)

    def _plan(self, messages: list[dict[str, str]], judge: bool) -> _Plan:
        from aspd.sample import end_of_turn_ids, prompt_ids

        self._load()
        tok, model = self.tokenizer, self.model
        ids = prompt_ids(tok, messages)
        stops = set(end_of_turn_ids(tok))
        if tok.eos_token_id is not None:
            stops.add(int(tok.eos_token_id))
        max_new = self.judge_max_new_tokens if judge else self.max_new_tokens
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit:
            max_new = min(max_new, limit - len(ids))
            if max_new < 1:
                raise ValueError(f"prompt of {len(ids)} tokens leaves no room in the {limit}-token context")
        # Reproducible per request: the seed depends on the prompt, not on the order samples arrive in.
        digest = hashlib.sha256(json.dumps([messages, judge], ensure_ascii=False).encode()).digest()
        return _Plan(ids, frozenset(stops), self.judge_temperature if judge else self.temperature, max_new,
                     self.seed + int.from_bytes(digest[:4], "little"))

    def _reply(self, row: list[int], stops: frozenset[int]) -> tuple[str, int]:
        """A generated row's text (up to its first stop token) and its token count (the stop included)."""
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        vocab = len(self.tokenizer)  # ids past it: the engine's control tokens, never text
        return self.tokenizer.decode([t for t in row[:cut] if t < vocab], skip_special_tokens=True), \
            min(cut + 1, len(row))

    async def complete(self, messages: list[dict[str, str]], *, judge: bool, count: int) -> list[str | None]:
        log_ = current_log()
        if self.batching:
            try:
                return await self._complete_batched(messages, judge, count)
            except _Unbatchable:
                pass  # the engine cannot run this model: the previous path, for this and every later call
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                replies, prompt_tokens, new_tokens = await asyncio.to_thread(self._generate, messages, judge, count)
            except Exception as e:  # one bad prompt (too long, OOM) must not end the run
                log_.calls += count
                log_.fail("request_failed", f"local generation failed: {type(e).__name__}: {e}")
                return [None] * count
        log_.calls += count
        log_.prompt_tokens += prompt_tokens
        log_.completion_tokens += new_tokens
        return list(replies)

    # ------------------------------------------------------------------ continuous batching

    async def _complete_batched(self, messages: list[dict[str, str]], judge: bool,
                                count: int) -> list[str | None]:
        log_ = current_log()
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="aspd-local")
        try:
            plan, reqs = await loop.run_in_executor(self._pool, self._requests, messages, judge, count)
        except _Unbatchable:
            raise
        except Exception as e:  # one bad prompt (too long) must not end the run
            log_.calls += count
            log_.fail("request_failed", f"local generation failed: {type(e).__name__}: {e}")
            return [None] * count
        futures = []
        for r in reqs:
            fut: asyncio.Future[None] = loop.create_future()
            # Called on the worker thread when the request leaves the engine (done, failed or cancelled).
            r.on_done = lambda _r, f=fut: loop.call_soon_threadsafe(lambda: f.done() or f.set_result(None))
            futures.append(fut)
            self._waiting.add(fut)
        self._pending.extend(reqs)
        if self._driver is None:
            self._driver = asyncio.create_task(self._drive())
        try:
            await asyncio.gather(*futures)
        except BaseException:
            for r in reqs:  # cancelled: the rows stop at the next step boundary
                r.cancel()
            raise
        finally:
            self._waiting.difference_update(futures)
        replies: list[str | None] = []
        new_tokens = 0
        for r in reqs:
            text, n = self._reply(r.result.answer_ids, plan.stops) if r.result is not None else (None, 0)
            replies.append(text)
            new_tokens += n
        failed = [r.error or self._error for r in reqs if r.result is None]
        if failed:
            e = failed[0]
            log_.fail("request_failed", f"local generation failed: {type(e).__name__}: {e}")
        if len(reqs) < count:  # greedy: one row stands for all (accounted as `count` rows, as generate does)
            replies, new_tokens = replies * count, new_tokens * count
        log_.calls += count
        log_.prompt_tokens += len(plan.ids) * count
        log_.completion_tokens += new_tokens
        return replies

    def _requests(self, messages: list[dict[str, str]], judge: bool, count: int) -> tuple[_Plan, list[Any]]:
        """On the worker thread: the engine (made on first use), and one request per reply wanted (one for
        all when greedy)."""
        from aspd.engine.batch import BatchRequest
        from aspd.engine.sampling import SamplingParams
        from aspd.engine.types import Limits

        if not self.batching:  # an earlier call found the engine unusable
            raise _Unbatchable
        plan = self._plan(messages, judge)
        if self._batch is None:
            self._batch = self._make_engine()
        limits = Limits(max_new_tokens=plan.max_new)
        if plan.temperature <= 0:  # greedy rows are all alike: decode one
            return plan, [BatchRequest(list(plan.ids), "serial", SamplingParams(), limits)]
        # Row i has its own seed, so the N candidates differ.
        return plan, [BatchRequest(list(plan.ids), "serial", SamplingParams(
            temperature=plan.temperature, top_p=self.top_p or 1.0, seed=(plan.seed + i) % (1 << 62)), limits)
            for i in range(count)]

    def _make_engine(self) -> Any:
        from aspd.engine.batch import BatchEngine

        try:
            # The control-token rows it adds sit at the mean embedding, so greedy decoding never picks them.
            return BatchEngine.for_plain_model(self.model, self.tokenizer, max_batch=self.max_batch)
        except Exception as e:  # noqa: BLE001 - e.g. an architecture without 4D masks: generate still works
            log.warning("continuous batching is unavailable for %s (%s: %s); generating one request at a time",
                        self.source, type(e).__name__, e)
            self.batching = False
            raise _Unbatchable from e

    async def _drive(self) -> None:
        """Step the engine on the worker thread until nothing is left; new requests join at step boundaries."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                new, self._pending = self._pending, []
                if not await loop.run_in_executor(self._pool, self._step, new) and not self._pending:
                    return  # nothing ran and nothing came meanwhile (no await between this check and the exit)
        except Exception as e:  # noqa: BLE001 - the engine broke: every waiting call fails, the run goes on
            log.exception("local batching failed")
            self._error = e
            for f in self._waiting:
                if not f.done():
                    f.set_result(None)
        finally:
            self._driver = None

    def _step(self, new: list[Any]) -> bool:
        for r in new:
            try:
                self._batch.submit(r)
            except ValueError as e:  # this request only (the engine refused it)
                r.error, r.done = e, True
                r.on_done(r)
        return bool(self._batch.step())

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    # ------------------------------------------------------------------ one request at a time

    def _generate(self, messages: list[dict[str, str]], judge: bool, count: int) -> tuple[list[str], int, int]:
        import torch

        plan = self._plan(messages, judge)
        tok, model = self.tokenizer, self.model
        torch.manual_seed(plan.seed)
        pad = tok.pad_token_id if tok.pad_token_id is not None else min(plan.stops)
        kwargs: dict[str, Any] = {"max_new_tokens": plan.max_new, "pad_token_id": pad,
                                  "eos_token_id": sorted(plan.stops)}
        if plan.temperature > 0:
            kwargs.update(do_sample=True, temperature=plan.temperature, top_k=0)
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        else:
            kwargs.update(do_sample=False)
        device = next(model.parameters()).device
        replies: list[str] = []
        new_tokens = 0
        ids = plan.ids
        for start in range(0, count, self.batch_size):
            rows = min(self.batch_size, count - start)
            input_ids = torch.tensor([ids] * rows, device=device)
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
            for row in out[:, len(ids):].tolist():
                text, n = self._reply(row, plan.stops)
                replies.append(text)
                new_tokens += n
        return replies, len(ids) * count, new_tokens


class _Unbatchable(Exception):
    """The engine cannot run this model; the backend falls back to one request at a time."""
