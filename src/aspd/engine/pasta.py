"""PASTA-LANG decoding in the engine's one sequence and one KV cache.

The main stream decodes as usual. When a stream samples `<promise/>`, a new stream is forked in the same cache:
the engine feeds it `<async>` (in the same forward as the promise) and from then on every live stream
advances one token per batched forward. A stream that samples `</scope>` waits until every stream forked in
that scope has sampled `</async>`; then `</scope>` is fed seeing all of their tokens, and decoding goes on.
What each token sees and its position come from `aspd.pasta.sync.SyncTracker`, the rules training uses.

The answer is the main stream with every promise replaced by its span's text (recursively); `markup` keeps
the PASTA training form (`<promise/><async>...</async>` in place).

`PastaRun` is a stepped decoder like the others (`aspd.engine.core.Stepped`): each forward's feed carries the
tracker's visibility as explicit rows over the request's own slots, so it is batched beside other requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from aspd.engine.core import Draw, Feed, Stepped, Steps
from aspd.engine.kv import DynamicKV, Slots
from aspd.engine.sampling import MAIN_STREAM, BatchSampler, SamplingParams, Stream, StreamSampler
from aspd.engine.types import Event, Generation, Limits, Stats
from aspd.markup import Document, Serial
from aspd.pasta.sync import SyncTracker, Tag, _Scope
from aspd.pasta.tokens import PastaIds

if TYPE_CHECKING:
    from aspd.engine.core import HybridEngine

MAX_DEPTH = 4  # nested scopes per stream


@dataclass
class _S:
    """One stream: what it fed, what it will feed next, and the forks its promises started (in order)."""

    sid: int
    hist: list[int]  # sampler history: the parent's history at the fork, then this stream's tokens
    ids: list[int] = field(default_factory=list)  # tokens fed on this stream (prompt excluded)
    pending: int | None = None
    forks: list[int] = field(default_factory=list)
    done: bool = False

    @property
    def key(self) -> Stream:
        return MAIN_STREAM if self.sid == 0 else (0, self.sid)


class PastaRun(Stepped):
    """One PASTA answer as a stepped decoder (`Stepped`): every forward's rows carry the tracker's visibility."""

    def __init__(self, eng: HybridEngine, prompt: list[int], sp: SamplingParams, limits: Limits,
                 forced: list[int], on_event: Callable[[Event], None] | None, record: bool,
                 kv: DynamicKV | Slots, sampler: StreamSampler | BatchSampler, promise_len: int = 1):
        self.e, self.prompt, self.sp, self.lim = eng, prompt, sp, limits
        self.forced, self.on_event, self.record = forced, on_event, record
        self.kv, self.sampler = kv, sampler
        self.t = SyncTracker(promise_len, capacity=max(256, len(prompt) + limits.max_new_tokens + 64))
        if eng.pasta is None:
            raise ValueError("mode 'pasta' needs a model with the PASTA tags: train one with `aspd train --format "
                             "pasta`, or call aspd.pasta.tokens.add_pasta_tokens(tokenizer, model) first")
        self.tags: PastaIds = eng.pasta
        self.tag_of = {self.tags.scope: Tag.SCOPE, self.tags.scope_end: Tag.SCOPE_END,
                       self.tags.async_: Tag.ASYNC, self.tags.async_end: Tag.ASYNC_END,
                       self.tags.promise: Tag.PROMISE}
        self.stats = Stats(prefill_tokens=len(prompt))
        self.streams: list[_S] = [_S(0, list(prompt))]
        self.scopes: list[_Scope] = []  # every scope opened so far (the tracker's, with its forks), closed or not
        self.slots: list[tuple[int, int, int, int]] = []
        self.logits: list[torch.Tensor] = []
        self.fed: list[tuple[int, int]] = []  # (stream, token) of the last forward, in row order
        c = eng.ctrl
        self._ban_always = eng._ban([*c.all(), self.tags.async_])

    # ------------------------------------------------------------------ plumbing

    def forward(self, feeds: list[tuple[int, int]],
                prefill: bool = False) -> Generator[Feed, torch.Tensor, torch.Tensor]:
        """Feed (stream, token) pairs in one forward through the tracker; returns their logits [k, V].

        A `<promise/>` starts a fork whose `<async>` this call adds right after it (same forward)."""
        ids, pos, sids, rows = [], [], [], []
        i = 0
        while i < len(feeds):
            sid, tok = feeds[i]
            fed = self.t.feed(sid, self.tag_of.get(tok))
            s = self.streams[sid]
            if tok == self.tags.scope and not prefill:  # a group counts when it opens, even if the length cuts it
                self.scopes.append(self.t.scope_of(sid))
            if not prefill:  # the prompt is already the main stream's history
                s.ids.append(tok)
                s.hist.append(tok)
            ids.append(tok)
            pos.append(fed.position)
            sids.append(sid)
            rows.append(self.t.row(sid))
            if fed.fork is not None:
                self.streams.append(_S(fed.fork, list(s.hist)))
                s.forks.append(fed.fork)
                if isinstance(self.sampler, BatchSampler):
                    self.sampler.fork(self.streams[fed.fork].key, s.key)
                feeds = [*feeds[: i + 1], (fed.fork, self.tags.async_), *feeds[i + 1 :]]
            i += 1
        mat = torch.zeros(len(rows), self.t.n, dtype=torch.bool)
        for r, row in enumerate(rows):
            mat[r, : row.size] = torch.from_numpy(row)
        logits = yield from self.step(ids, pos, sids, [0] * len(ids), mat)
        self.fed = list(zip(sids, ids, strict=True))
        return logits

    def ban(self, s: _S) -> torch.Tensor:
        e, tg, t = self.e, self.tags, self.t
        b = self._ban_always.clone()
        depth = t.depth(s.sid)
        is_async = t.is_async(s.sid)
        last = s.ids[-1] if s.ids else None
        capped = is_async and len(s.ids) + 1 >= self.lim.max_branch_tokens
        if capped:  # only closing tags may come now
            b[:] = True
            b[tg.scope_end if depth else tg.async_end] = False
            return b
        if not depth:
            b[tg.scope_end] = True
        if not is_async or depth:
            b[tg.async_end] = True
        scope = t.scope_of(s.sid)
        if (scope is None or last in (tg.promise, tg.scope) or len(scope.forks) >= self.lim.max_branches
                or self.stats.tokens >= self.lim.max_new_tokens - 2):
            b[tg.promise] = True
        if depth >= MAX_DEPTH or len(self.scopes) >= self.lim.max_groups:
            b[tg.scope] = True
        if depth or is_async:  # the answer ends only with every scope closed; an async span ends by </async>
            b[list(e.eot)] = True
        return b

    def emit_token(self, s: _S, tok: int) -> None:
        if self.on_event is not None:
            self.on_event(Event("token", s.key, tok, self.e.tokenizer.decode([tok])))

    # ------------------------------------------------------------------ main loop

    def steps(self) -> Steps:
        e, lim, tg = self.e, self.lim, self.tags
        t0 = time.perf_counter()
        last = (yield from self.forward([(0, tok) for tok in self.prompt], prefill=True))[-1:]
        samplers: list[_S] = [self.streams[0]]  # streams whose next token the logits rows give
        finish = "length"
        tp: float | None = None
        while True:
            live = [s for s in samplers if not s.done]
            if live:
                yield from self.sample(live, last[[samplers.index(s) for s in live]])
            main = self.streams[0]
            if main.pending is not None and main.pending in e.eot:
                main.ids.append(main.pending)
                finish = "stop"
                break
            if self.stats.tokens >= lim.max_new_tokens:
                break
            feeds: list[tuple[int, int]] = []
            for s in self.streams:
                if s.done or s.pending is None:
                    continue
                if s.pending == tg.scope_end and not self.t.can_close(s.sid):
                    continue  # waits for its scope's async spans
                tok, s.pending = s.pending, None
                feeds.append((s.sid, tok))
            if not feeds:
                break  # cannot happen while a waiting stream has a live fork; a guard against a stall
            last = yield from self.forward(feeds)
            samplers = []
            for sid, tok in self.fed:
                s = self.streams[sid]
                if tok == tg.async_end:
                    s.done = True
                samplers.append(s)
            busy = any(not s.done for s in self.streams[1:])
            if busy and tp is None:
                tp = time.perf_counter()
            elif not busy and tp is not None:
                self.stats.parallel_seconds += time.perf_counter() - tp
                tp = None
        if tp is not None:
            self.stats.parallel_seconds += time.perf_counter() - tp
        self.stats.seconds = time.perf_counter() - t0
        self.stats.branches = [len(sc.forks) for sc in self.scopes if sc.forks]  # a scope without a span is serial
        text = self.text(0)
        self.stats.visible_tokens = len(e.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
        markup = self.markup(0)
        self.emit(Event("done"))
        answer = [tok for s in self.streams for tok in s.ids]
        return Generation(Document((Serial(text),)) if text else Document(()), text, markup, self.stats, finish,
                          answer, self.slots, self.logits, markup=markup)

    def sample(self, live: list[_S], logits: torch.Tensor) -> Generator[Draw, list[int], None]:
        """One token per live stream, one batched draw; forced answer-prefix tokens replace the main stream's."""
        e, tg = self.e, self.tags
        bans = torch.stack([self.ban(s) for s in live])
        toks = yield Draw(self.sampler.prepare(logits, [s.key for s in live], bans, [s.hist for s in live]))
        for s, tok in zip(live, toks, strict=True):
            if s.sid == 0 and self.forced:
                tok = self.forced.pop(0)
            elif tok in e.eot and s.sid:
                tok = tg.async_end  # a span cannot end the answer; it just ends itself
            s.pending = tok
            self.stats.tokens += 1
            if s.sid:
                self.stats.parallel_tokens += 1
            self.emit_token(s, tok)

    # ------------------------------------------------------------------ output

    def _pieces(self, sid: int, spans: bool) -> str:
        """A stream's text; each promise followed by (spans) or replaced by (not spans) its fork's text."""
        s, tg, tok = self.streams[sid], self.tags, self.e.tokenizer
        out: list[str] = []
        run: list[int] = []
        forks = iter(s.forks)
        keep = {tg.scope, tg.scope_end, tg.async_, tg.async_end}
        for t in s.ids:
            if t == tg.promise:
                out.append(tok.decode(run, skip_special_tokens=False))
                run = []
                f = next(forks, None)
                if spans:
                    out.append(tok.convert_ids_to_tokens(t))
                if f is not None:
                    out.append(self._pieces(f, spans))
            elif t in keep:
                if spans:
                    out.append(tok.decode(run, skip_special_tokens=False) + tok.convert_ids_to_tokens(t))
                    run = []
            elif t not in self.e.eot:
                run.append(t)
        out.append(tok.decode(run, skip_special_tokens=False))
        return "".join(out)

    def text(self, sid: int) -> str:
        return self._pieces(sid, spans=False).strip()

    def markup(self, sid: int) -> str:
        return self._pieces(sid, spans=True)
