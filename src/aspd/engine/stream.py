"""Streaming: events as an iterator, and the reading-order text view of a hybrid answer.

The view shows serial text at once. Inside a group it shows branch 1 live; branch k appears as soon as
branches 1..k-1 have finished (its text so far at once, then live). Title markup is held back until it is known
not to open a group (then its text is shown, as `aspd.engine.answer` reads it). The concatenated deltas equal
the answer's flattened text (`Generation.text`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from aspd.engine.core import MAIN_STREAM, Event, Generation, HybridEngine
from aspd.engine.text import Detokenizer
from aspd.markup import is_head


class _Part:
    """A piece of visible text; branch bodies are trimmed as flatten() does (after a head: on the right only)."""

    def __init__(self, tokenizer: Any, strip: bool, head: str = ""):
        self.detok = Detokenizer(tokenizer)
        self.strip = strip
        self.head = head  # shown before the first body text
        self.started = bool(head)
        self.held = ""  # trailing whitespace not yet known to be inner
        self.shown = False  # has any of it reached the reader (decides the separator)

    def push(self, tok: int | None) -> str:
        delta = self.detok.push(tok) if tok is not None else self.detok.flush()
        if not self.strip:
            return delta
        text = self.held + delta
        if not self.started:
            text = text.lstrip()
            if not text:
                return ""
            self.started = True
        body = text.rstrip()
        self.held = text[len(body) :]
        if self.head:
            body, self.head = self.head + body, ""
        return body


class ReadingOrderView:
    """Feed it engine events; it returns the text a reader should see next."""

    def __init__(self, engine: HybridEngine):
        self.tok = engine.tokenizer
        self.control = set(engine.ctrl.all())
        self.title, self.title_end, self.para = engine.ctrl.title, engine.ctrl.title_end, engine.ctrl.para
        self.eot = engine.eot
        self.any_shown = False
        self.serial: _Part | None = None
        self.in_title = False
        self.pending: list[int] = []  # title markup and <|para|> that may still open a group
        self.branches: list[_Part] = []
        self.buffers: list[str] = []
        self.finished: set[int] = set()
        self.live = 0  # the branch shown live; those before it have finished

    def _show(self, part: _Part, text: str) -> str:
        """Parts are joined by one newline, as in flatten()."""
        if not text:
            return ""
        if not part.shown:
            part.shown = True
            if self.any_shown:
                text = "\n" + text
            self.any_shown = True
        return text

    def push(self, ev: Event) -> str:
        if ev.kind in ("open", "done"):
            # At the end, titles that opened no group are text; at an opening they were the group's.
            out = self._release() if ev.kind == "done" else ""
            self.pending, self.in_title = [], False
            out += self._show(self.serial, self.serial.push(None)) if self.serial else ""
            self.serial = None
            if ev.kind == "done":
                return out
            self.branches = [_Part(self.tok, strip=True, head=t.strip() if is_head(t) else "") for t in ev.titles]
            self.buffers = ["" for _ in ev.titles]
            self.finished, self.live = set(), 0
            return out
        if ev.kind == "close":
            out = "".join(self._show(self.branches[b], self.buffers[b]) for b in range(self.live, len(self.branches)))
            self.branches, self.buffers = [], []
            return out
        if ev.kind != "token" or ev.token is None:
            return ""
        if ev.stream == MAIN_STREAM:
            return self._main(ev.token)
        return self._branch(ev.stream[1], ev.token)

    def _main(self, tok: int) -> str:
        if tok in self.eot:
            return ""
        if self.in_title or tok == self.title:
            self.in_title = tok != self.title_end
            self.pending.append(tok)
            return ""
        if tok == self.para:
            self.pending.append(tok)
            return ""
        return self._release() + self._text(tok)

    def _release(self) -> str:
        """The pending title markup was text after all."""
        out = "".join(self._text(t) for t in self.pending)
        self.pending = []
        return out

    def _text(self, tok: int) -> str:
        if tok in self.control:
            return ""
        if self.serial is None:
            self.serial = _Part(self.tok, strip=False)
        return self._show(self.serial, self.serial.push(tok))

    def _branch(self, b: int, tok: int) -> str:
        if tok in self.control:
            self.finished.add(b)
            self.buffers[b] += self.branches[b].push(None)
        else:
            self.buffers[b] += self.branches[b].push(tok)
        out = ""
        while self.live < len(self.branches):
            out += self._show(self.branches[self.live], self.buffers[self.live])
            self.buffers[self.live] = ""
            if self.live not in self.finished:
                break
            self.live += 1
        return out


def stream_events(engine: HybridEngine, prompt: Any, **kw: Any) -> Iterator[Event | Generation]:
    """Run `engine.generate` in a thread and yield its events as they happen, then the Generation.

    Closing the iterator early stops generation at the next token.
    """
    q: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()

    class _Stop(Exception):
        pass

    def on_event(ev: Event) -> None:
        if stop.is_set():
            raise _Stop
        q.put(ev)

    def work() -> None:
        try:
            q.put(engine.generate(prompt, on_event=on_event, **kw))
        except _Stop:
            q.put(None)
        except BaseException as e:  # re-raised in the consumer's thread
            q.put(e)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Generation):
                return
    finally:
        stop.set()
        t.join()
