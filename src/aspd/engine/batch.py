"""Continuous batching: the live streams of many requests in one forward per step (shaped as vLLM v1 is).

- **Scheduler** (`BatchEngine.step`): at every step boundary it drops cancelled requests, admits waiting ones
  first come first served while the batch has room (`max_batch`) and the cache manager can hold them
  (`max_slots`), then steps every running request: each feeds all of its live streams (the serial stream, or
  one token per live branch, or a group opening with every branch prefix). A request that cannot fit waits.
- **Model runner** (`StaticKV.run`): packs the requests' feeds into one forward; a request is one more level of
  owner in the slot tables, so its tokens see only its own slots, at its own positions.
- **Cache manager** (`StaticKV`'s slot pool): a request's slots come from a free list as it feeds and go back
  when it ends, so requests of any lengths share one cache without fragmentation. Admission reserves each
  request's worst case (`reservation`), so a running request never waits for memory; if a request feeds more
  than its estimate, the pool grows rather than fail.

Each request is a stepped decoder (`HybridEngine.decoder`, an `aspd.engine.core.Stepped`) with its own sampling parameters, limits and seeded
generator: its greedy tokens (and its seeded draws, up to float rounding) are those it gets run alone.
Requests join and leave at step boundaries. Every mode is stepped: hybrid and serial (`_Run`), PASTA (its feeds
carry explicit visibility rows, which the runner applies to that request's rows only) and SoT (a serial
skeleton, then a hybrid expansion, on the request's own cache view; a `sot` request gives its question as
`messages`). Nothing a request does is visible to another (SoT reads control tokens as text in its own feeds,
never by changing the shared model). The eager engine has no shared cache: its requests are interleaved step
by step, one forward each.

A BatchEngine is driven from one thread (`step`, `submit`); `BatchRequest.cancel` may come from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from aspd.engine.core import STEPPED, Draw, Feed, HybridEngine, Steps
from aspd.engine.kv import DynamicKV, Part, Slots
from aspd.engine.sampling import SamplingParams, sample_many
from aspd.engine.types import Event, Generation, Limits
from aspd.sample import Message

log = logging.getLogger("aspd.engine.batch")

DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_SLOTS = 1 << 15


def reservation(prompt_tokens: int, mode: str, limits: Limits) -> int:
    """Cache slots a request may take at most: its prompt, every sampled token, and in hybrid mode the tokens the
    engine inserts itself (a branch prefix per title, about as long as the title the model wrote, plus the
    tag and ':' tokens, and `<|/para|>`), bounded by the budget; in pasta mode an `<async>` per promise. (SoT
    reserves its larger stage: `aspd.engine.sot.reservation_sot`.)"""
    extra = 0
    if mode == "hybrid":
        extra = min(limits.max_new_tokens + 4 * limits.max_branches * limits.max_groups,
                    limits.max_groups * limits.max_branches * (limits.max_title_tokens + 4))
    elif mode == "pasta":  # every sampled <promise/> brings the <async> the engine feeds
        extra = limits.max_new_tokens
    return prompt_tokens + limits.max_new_tokens + extra + 1


@dataclass
class BatchRequest:
    """One request in a BatchEngine. `on_start` runs when it is admitted; `on_done` when it leaves (finished,
    failed or cancelled): then exactly one of `result`, `error` is set, or neither when it was cancelled."""

    ids: list[int]  # the prompt; for `sot`, left empty it is filled from `messages` (for accounting)
    mode: str = "hybrid"
    sampling: SamplingParams = field(default_factory=SamplingParams)
    limits: Limits = field(default_factory=Limits)
    answer_prefix: Sequence[int] = ()  # forced ids at the start of the answer (sot: of its skeleton)
    on_event: Callable[[Event], None] | None = None
    record: bool = False
    on_start: Callable[[BatchRequest], None] | None = None
    on_done: Callable[[BatchRequest], None] | None = None
    messages: str | Sequence[Message] | None = None  # sot: the question (SoT writes its own prompts from it)
    cancelled: threading.Event = field(default_factory=threading.Event)
    result: Generation | None = None
    error: BaseException | None = None
    done: bool = False
    reserved: int = 0
    _kv: DynamicKV | Slots | None = None
    _steps: Steps | None = None
    _feed: Feed | Draw | None = None

    def cancel(self) -> None:
        """Stop at the next step boundary (or never start, if still waiting)."""
        self.cancelled.set()


class BatchEngine:
    """Scheduler of continuous batching over one HybridEngine (see the module docstring)."""

    def __init__(self, engine: HybridEngine, *, max_batch: int = DEFAULT_MAX_BATCH,
                 max_slots: int = DEFAULT_MAX_SLOTS):
        if max_batch < 1 or max_slots < 1:
            raise ValueError("max_batch and max_slots must be >= 1")
        self.e = engine
        self.max_batch = max_batch
        self.max_slots = max_slots
        self.waiting: deque[BatchRequest] = deque()
        self.running: list[BatchRequest] = []
        self.reserved = 0  # slots reserved by the running requests
        self.steps = 0
        self.forward_seconds = 0.0

    @classmethod
    def for_plain_model(cls, model: Any, tokenizer: Any, *, max_batch: int = DEFAULT_MAX_BATCH) -> BatchEngine:
        """Batching for serial answers of a model that has no control tokens (a teacher, a rewriter): the engine
        needs rows for them, so they are added to the model and to a copy of the tokenizer, which leaves the
        caller's tokenizer, and so its prompts and decoding, as they were. Ids >= len(tokenizer) in an answer
        are those tokens (never trained; callers drop them)."""
        import copy

        from aspd.tokens import add_control_tokens

        engine_tok = copy.deepcopy(tokenizer)
        add_control_tokens(engine_tok, model)
        return cls(HybridEngine(model, engine_tok), max_batch=max_batch)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def submit(self, req: BatchRequest) -> BatchRequest:
        """Queue a request (FIFO); it starts at a step boundary when it fits. A `sot` request gives its question
        as `messages` (text or chat messages)."""
        if req.mode not in STEPPED:
            raise ValueError(f"mode must be one of {', '.join(STEPPED)}; not {req.mode!r}")
        if req.mode == "sot":
            from aspd.engine.sot import reservation_sot

            if req.messages is None:
                raise ValueError("mode 'sot' rewrites the question into its own prompts: give it as messages")
            prompt = HybridEngine._sot_prompt(req.messages)
            req.ids = req.ids or self.e.prompt_ids(prompt)
            req.reserved = reservation_sot(self.e, prompt, req.limits)
        elif not req.ids:
            raise ValueError("empty prompt")
        else:
            req.reserved = reservation(len(req.ids), req.mode, req.limits)
        self.waiting.append(req)
        return req

    def generate_many(self, requests: Sequence[BatchRequest]) -> list[Generation]:
        """Run requests to the end, batched; their answers in order (the first failure is raised)."""
        for r in requests:
            self.submit(r)
        while any(not r.done for r in requests):
            self.step()
        for r in requests:
            if r.error is not None:
                raise r.error
        return [r.result for r in requests]  # type: ignore[misc]

    # ------------------------------------------------------------------ scheduling

    def step(self) -> bool:
        """One step boundary and one forward for every running request; False when there was nothing to do."""
        # The lock: an answer run alone on the same engine (generate) holds the cache meanwhile.
        with self.e._lock, torch.inference_mode():
            for r in [r for r in self.running if r.cancelled.is_set()]:
                self._finish(r)
            self._admit()
            if not self.running:
                return False
            self._forward()
            return True

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_batch:
            r = self.waiting[0]
            if r.cancelled.is_set():
                self.waiting.popleft()
                r.done = True
                self._notify(r, r.on_done)
                continue
            if self.running and self.reserved + r.reserved > self.max_slots:
                return  # FIFO: it waits for running requests to free their slots (alone, it always starts)
            self.waiting.popleft()
            self.reserved += r.reserved
            self.running.append(r)
            self._notify(r, r.on_start)
            try:
                e = self.e
                r._kv = DynamicKV(e) if e.engine == "eager" else e.static_kv(r.reserved).open()
                prompt = r.messages if r.mode == "sot" else r.ids
                run = e.decoder(prompt, r._kv, mode=r.mode, sampling=r.sampling,  # type: ignore[arg-type]
                                limits=r.limits, answer_prefix=r.answer_prefix, on_event=r.on_event, record=r.record)
                r._steps = run.steps()
                r._feed = next(r._steps)
            except Exception as err:  # noqa: BLE001 - the request fails, the others go on
                self._finish(r, error=err)

    def _forward(self) -> None:
        batch = [r for r in self.running if r._feed is not None]
        t0 = time.perf_counter()
        try:
            if self.e.engine == "eager":  # no shared cache: one forward per request
                outs = [r._kv.feed(r._feed.ids, r._feed.pos, r._feed.grp, r._feed.br,  # type: ignore[union-attr]
                                   r._feed.rows) for r in batch]
            else:
                kv = self.e.static_kv()
                outs = kv.run([Part(r._kv.req, r._feed.ids, r._feed.pos, r._feed.grp, r._feed.br,  # type: ignore
                                    r._feed.rows) for r in batch])
        except Exception as err:  # noqa: BLE001 - a failed forward fails the requests in it, not the engine
            log.exception("batched forward failed")
            for r in batch:
                self._finish(r, error=err)
            return
        self.steps += 1
        self.forward_seconds += time.perf_counter() - t0
        for r, logits in zip(batch, outs, strict=True):
            self._send(r, logits)
        # Every request's tokens are sampled together and read with one host sync, not one per request.
        while draws := [r for r in batch if isinstance(r._feed, Draw)]:
            toks = sample_many([r._feed.pending for r in draws])  # type: ignore[union-attr]
            flat, at = torch.cat(toks).tolist(), 0
            for r, t in zip(draws, toks, strict=True):
                self._send(r, flat[at : at + len(t)])
                at += len(t)

    def _send(self, r: BatchRequest, value: torch.Tensor | list[int]) -> None:
        """Give a request its logits or its drawn tokens; keep what it asks next, or end it."""
        try:
            r._feed = r._steps.send(value)  # type: ignore[union-attr]
        except StopIteration as end:
            self._finish(r, result=end.value)
        except Exception as err:  # noqa: BLE001 - e.g. its client went away (raised from on_event)
            self._finish(r, error=err)

    def _finish(self, r: BatchRequest, result: Generation | None = None, error: BaseException | None = None) -> None:
        if r._steps is not None and result is None:
            r._steps.close()
        if isinstance(r._kv, Slots):
            r._kv.close()
        r._kv, r._steps, r._feed = None, None, None
        self.running.remove(r)
        self.reserved -= r.reserved
        r.result, r.error, r.done = result, error, True
        self._notify(r, r.on_done)

    @staticmethod
    def _notify(r: BatchRequest, hook: Callable[[BatchRequest], Any] | None) -> None:
        if hook is None:
            return
        try:
            hook(r)
        except Exception:  # noqa: BLE001 - a callback's failure must not stop the other requests
            log.exception("request callback failed")
