"""Synchronous prefixes: what each PASTA token sees, and its position id. One tracker serves training and decoding.

A *stream* is a run of tokens decoded one after another: stream 0 is the main stream (the prompt included);
each `<promise/>` forks a new stream that starts with the interpreter-inserted `<async>` and ends with
`</async>`. Feed order does not matter to the rules, only which stream fed what:

- a token sees everything its stream saw when it was fed, and itself (its *synchronous prefix*, plus itself);
- a fork starts from a copy of its parent's view taken right after the `<promise/>`;
- `</scope>` is fed once every stream forked inside that scope has ended, and it (and all that follows in its
  stream) also sees everything those streams saw: the scope's asynchronous content is joined;
- position id = number of tokens seen before the token, plus the stream's offset. The offset is zero unless
  `promise_len` > 1: then each promise reserves `promise_len` positions in its stream (the async span fills
  them from the promise's position + 1 on), and after a join the stream goes on from
  max(tokens seen, last position + 1).

With `promise_len=1` this is the paper's rule (position = size of the synchronous prefix), and a scope with
no promises is ordinary causal decoding. A training layout feeds a whole annotated sample in text order;
the engine feeds the same tokens step by step: both get the same rows and positions from `feed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

MAIN_STREAM = 0


class Tag(Enum):
    SCOPE = "<scope>"
    SCOPE_END = "</scope>"
    ASYNC = "<async>"
    ASYNC_END = "</async>"
    PROMISE = "<promise/>"


class SyncError(ValueError):
    """A tag that is not valid where it was fed (unbalanced scope, promise outside a scope, ...)."""


@dataclass
class _Scope:
    opener: int
    offset: int  # the opener's offset when the scope opened
    forks: list[int] = field(default_factory=list)


@dataclass
class _Stream:
    vis: np.ndarray  # bool over slots
    seen: int  # vis.sum(), kept incrementally
    offset: int = 0
    scopes: list[_Scope] = field(default_factory=list)  # opened by this stream, still open
    home: _Scope | None = None  # the scope a fork was made in
    parent: int | None = None
    last_pos: int = -1
    started: bool = False
    done: bool = False


@dataclass(frozen=True)
class Fed:
    slot: int
    position: int
    fork: int | None = None  # the new stream a <promise/> started


class SyncTracker:
    """Slots, views and positions of the streams of one PASTA sequence."""

    def __init__(self, promise_len: int = 1, capacity: int = 256):
        if promise_len < 1:
            raise ValueError("promise_len must be >= 1")
        self.promise_len = promise_len
        self.n = 0
        self._cap = capacity
        self.streams: list[_Stream] = [self._new(np.zeros(capacity, dtype=bool), 0, None)]
        self.streams[0].started = True

    def _new(self, vis: np.ndarray, offset: int, parent: int | None) -> _Stream:
        return _Stream(vis=vis, seen=int(vis.sum()), offset=offset, parent=parent)

    def _grow(self) -> None:
        self._cap *= 2
        for s in self.streams:
            s.vis = np.concatenate([s.vis, np.zeros(self._cap - s.vis.size, dtype=bool)])

    # ------------------------------------------------------------------ queries

    def scope_of(self, stream: int) -> _Scope | None:
        """The innermost scope a promise of this stream would belong to (its own, else the one it was forked in)."""
        s = self.streams[stream]
        return s.scopes[-1] if s.scopes else s.home

    def depth(self, stream: int) -> int:
        return len(self.streams[stream].scopes)

    def can_close(self, stream: int) -> bool:
        """`</scope>` may be fed now: the stream has an open scope and every fork made in it has ended."""
        s = self.streams[stream]
        return bool(s.scopes) and all(self.streams[f].done for f in s.scopes[-1].forks)

    def is_async(self, stream: int) -> bool:
        return self.streams[stream].parent is not None

    def done(self, stream: int) -> bool:
        return self.streams[stream].done

    def row(self, stream: int, width: int | None = None) -> np.ndarray:
        """A copy of what the stream sees now, over the first `width` slots (default: every fed slot)."""
        v = self.streams[stream].vis
        w = self.n if width is None else width
        out = np.zeros(w, dtype=bool)
        k = min(w, v.size)
        out[:k] = v[:k]
        return out

    # ------------------------------------------------------------------ feeding

    def feed(self, stream: int, tag: Tag | None = None) -> Fed:
        """Feed one token (text if `tag` is None) on a stream; returns its slot, position and any new fork."""
        if not 0 <= stream < len(self.streams):
            raise SyncError(f"no stream {stream}")
        s = self.streams[stream]
        if s.done:
            raise SyncError(f"stream {stream} has ended with </async>")
        if not s.started and tag is not Tag.ASYNC:
            raise SyncError(f"stream {stream} must start with <async>")
        if s.started and tag is Tag.ASYNC:
            raise SyncError("<async> only starts a stream forked by <promise/>")
        if tag is Tag.SCOPE_END:
            if not s.scopes:
                raise SyncError("</scope> without an open <scope> in this stream")
            scope = s.scopes[-1]
            open_forks = [f for f in scope.forks if not self.streams[f].done]
            if open_forks:
                raise SyncError(f"</scope> before its async spans ended (streams {open_forks})")
            self._join(s, scope)
        elif tag is Tag.ASYNC_END:
            if s.parent is None:
                raise SyncError("</async> outside an async span")
            if s.scopes:
                raise SyncError("</async> inside an unclosed <scope>")
        elif tag is Tag.PROMISE and self.scope_of(stream) is None:
            raise SyncError("<promise/> outside any <scope>")
        if self.n == self._cap:
            self._grow()
        slot = self.n
        pos = s.seen + s.offset
        s.vis[slot] = True
        s.seen += 1
        s.last_pos = pos
        s.started = True
        self.n += 1
        fork = None
        if tag is Tag.SCOPE:
            s.scopes.append(_Scope(opener=stream, offset=s.offset))
        elif tag is Tag.SCOPE_END:
            s.scopes.pop()
        elif tag is Tag.ASYNC_END:
            s.done = True
        elif tag is Tag.PROMISE:
            scope = self.scope_of(stream)
            assert scope is not None
            f = self._new(s.vis.copy(), s.offset, stream)
            f.home = scope
            fork = len(self.streams)
            self.streams.append(f)
            scope.forks.append(fork)
            s.offset += self.promise_len - 1
        return Fed(slot, pos, fork)

    def _join(self, s: _Stream, scope: _Scope) -> None:
        for f in scope.forks:
            s.vis |= self.streams[f].vis
        s.seen = int(s.vis.sum())
        s.offset = max(scope.offset, s.last_pos + 1 - s.seen)
