"""The one model thread: a FIFO of jobs, one generation at a time, results handed back to the event loop.

There is no cross-request batching: torch runs one request's decode at a time on one thread. Admission is
counted here (running + waiting <= 1 + max_queue) so that the HTTP layer can answer 503 at once.
All tokenizer work of a job (reading-order view, stop strings, rebuilding a stopped answer) happens on this
thread too, so the engine's tokenizer is never used from two threads at once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aspd.engine.answer import AnswerBuilder
from aspd.engine.core import MAIN_STREAM, Event, Generation, HybridEngine, Limits, Stats
from aspd.engine.sampling import SamplingParams
from aspd.engine.stream import ReadingOrderView
from aspd.markup import Document, MarkupError, render

log = logging.getLogger("aspd.serve")


class _Abort(Exception):
    """Raised from on_event: the client went away."""


class _StopHit(Exception):
    """Raised from on_event: a stop string appeared in the visible text."""


@dataclass
class GenRequest:
    ids: list[int]
    mode: str
    sampling: SamplingParams
    limits: Limits
    stops: list[str] = field(default_factory=list)
    stream: bool = False
    branch_deltas: bool = False
    request_id: str = ""


@dataclass
class Chunk:
    """One engine event as the HTTP layer needs it: reading-order content plus the per-stream view."""

    content: str
    kind: str  # token | open | close | done | flush
    stream: str = "main"  # main | g{group}b{branch}
    delta: str = ""  # this stream's own text (control tokens and title markup removed)
    titles: tuple[str, ...] = ()
    group: int | None = None


@dataclass
class GenResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    stats: dict[str, Any]
    markup: str | None
    raw: str
    partial: bool  # stopped early by a stop string: stats/markup/raw cover what was generated until then


class StopCutter:
    """Cuts text at the first stop string, holding back any tail that could still become one."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.buf = ""
        self.hit = False

    def push(self, text: str) -> str:
        if self.hit or not text:
            return ""
        self.buf += text
        cut = min((i for i in (self.buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            out, self.buf = self.buf[:cut], ""
            return out
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.buf)), hold, -1):
                if self.buf.endswith(s[:k]):
                    hold = k
                    break
        out = self.buf[: len(self.buf) - hold]
        self.buf = self.buf[len(out) :]
        return out

    def flush(self) -> str:
        out, self.buf = ("" if self.hit else self.buf), ""
        return out


class EventLog:
    """Rebuilds doc, raw ids and stats from events, for an answer cut short by a stop string.

    The document and ids come from the engine's own `AnswerBuilder`, fed with the events; stats are counted here.
    """

    def __init__(self, engine: HybridEngine, prompt_len: int):
        self.e = engine
        self.t0 = time.perf_counter()
        self.stats = Stats(prefill_tokens=prompt_len, forwards=1)
        self.answer = AnswerBuilder(engine.tokenizer, engine.ctrl, engine.eot)
        self.open_at = 0.0

    def push(self, ev: Event) -> None:
        if ev.kind == "open":
            self.answer.open(ev.titles)
            self.stats.branches.append(len(ev.titles))
            self.open_at = time.perf_counter()
        elif ev.kind == "close":
            self._close_group()
        elif ev.kind == "token" and ev.token is not None:
            self.stats.tokens += 1
            if ev.stream != MAIN_STREAM:
                self.stats.parallel_tokens += 1
                self.answer.branch(ev.stream[1], ev.token)
                return
            self.stats.forwards += 1
            self.answer.main(ev.token)

    def _close_group(self) -> None:
        bodies = self.answer.bodies
        if bodies is None:
            return
        self.stats.forwards += max((len(b) for b in bodies), default=0)  # one per lockstep step
        self.stats.parallel_seconds += time.perf_counter() - self.open_at
        self.answer.close()

    def finish(self, text: str) -> tuple[Document, list[int], Stats]:
        self._close_group()
        doc, ids = self.answer.finish()
        self.stats.seconds = time.perf_counter() - self.t0
        self.stats.visible_tokens = len(self.e.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
        return doc, ids, self.stats


class StreamText:
    """Each stream's own text for the `branch_deltas` extension: control tokens and title markup removed."""

    def __init__(self, engine: HybridEngine):
        self.tok = engine.tokenizer
        self.control = set(engine.ctrl.all()) | set(engine.eot)
        self.title, self.title_end = engine.ctrl.title, engine.ctrl.title_end
        self.in_title = False

    def delta(self, ev: Event) -> str:
        tok = ev.token
        if tok is None:
            return ""
        if ev.stream == MAIN_STREAM and (tok == self.title or self.in_title):
            self.in_title = tok != self.title_end
            return ""
        if tok in self.control:  # the Detokenizer may flush held-back bytes with a control token
            return ev.text.replace(self.tok.convert_ids_to_tokens(tok), "")
        return ev.text


def render_markup(doc: Document) -> str | None:
    try:
        return render(doc)
    except MarkupError:  # e.g. the model wrote a literal "<branch" tag in its text
        return None


class Job:
    """One request on its way through the worker; items reach the event loop through an asyncio queue."""

    def __init__(self, req: GenRequest, loop: asyncio.AbstractEventLoop):
        self.req = req
        self.loop = loop
        self.items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.state = "new"  # new | waiting | running | done | cancelled

    def post(self, kind: str, value: Any = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass


class Worker:
    """Runs jobs one at a time on a dedicated thread, first come first served."""

    def __init__(self, engine: HybridEngine, max_queue: int):
        self.engine = engine
        self.max_queue = max_queue
        self.waiting = 0
        self.running: Job | None = None
        self.served = 0
        self.avg_seconds = 5.0  # moving average of job time, for Retry-After
        self._lock = threading.Lock()
        self._q: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="aspd-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        with self._lock:
            if self.running is not None:
                self.running.cancelled.set()
        self._q.put(None)

    def submit(self, job: Job) -> bool:
        """False when 1 running + max_queue waiting are already taken."""
        with self._lock:
            if self.waiting + (self.running is not None) >= 1 + self.max_queue:
                return False
            self.waiting += 1
            job.state = "waiting"
        self._q.put(job)
        return True

    def cancel(self, job: Job) -> None:
        """A waiting job leaves the queue at once; a running one stops at its next token."""
        with self._lock:
            if job.state == "waiting":
                self.waiting -= 1
                job.state = "cancelled"
        job.cancelled.set()

    def retry_after(self) -> int:
        with self._lock:
            ahead = self.waiting + (self.running is not None)
        return max(1, min(60, round(self.avg_seconds * ahead)))

    def _loop(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            with self._lock:
                if job.state != "waiting":
                    continue
                self.waiting -= 1
                job.state = "running"
                self.running = job
            t0 = time.perf_counter()
            kind, value = "cancelled", None
            try:
                value = self._run(job)
                kind = "done" if value is not None else "cancelled"
            except Exception as e:  # noqa: BLE001 - any failure goes back to the request, the thread lives on
                log.exception("request %s failed", job.req.request_id)
                kind, value = "error", e
            finally:
                # Free the slot before answering, so a client's next request never sees its own old job.
                with self._lock:
                    self.running = None
                    job.state = "done"
                    self.served += 1
                    self.avg_seconds = 0.8 * self.avg_seconds + 0.2 * (time.perf_counter() - t0)
            job.post(kind, value)

    def _run(self, job: Job) -> GenResult | None:
        e, req = self.engine, job.req
        view = ReadingOrderView(e) if (req.stream or req.stops) else None
        cutter = StopCutter(req.stops) if req.stops else None
        per_stream = StreamText(e) if req.branch_deltas else None
        events = EventLog(e, len(req.ids)) if req.stops else None
        shown: list[str] = []
        groups = -1

        def on_event(ev: Event) -> None:
            nonlocal groups
            if job.cancelled.is_set():
                raise _Abort
            if ev.kind == "open":
                groups += 1
            if events is not None:
                events.push(ev)
            content = view.push(ev) if view is not None else ""
            if cutter is not None:
                content = cutter.push(content)
            shown.append(content)
            if req.stream and (content or (per_stream is not None and ev.kind in ("token", "open", "close"))):
                stream = "main" if ev.stream == MAIN_STREAM else f"g{ev.stream[0]}b{ev.stream[1]}"
                delta = per_stream.delta(ev) if per_stream is not None and ev.kind == "token" else ""
                g = groups if ev.kind in ("open", "close") else None
                job.post("chunk", Chunk(content, ev.kind, stream, delta, ev.titles, g))
            if cutter is not None and cutter.hit and ev.kind != "done":
                raise _StopHit

        gen: Generation | None = None
        try:
            gen = e.generate(req.ids, mode=req.mode, sampling=req.sampling, limits=req.limits, on_event=on_event)
        except _Abort:
            log.info("request %s cancelled (client disconnected)", req.request_id)
            return None
        except _StopHit:
            pass
        if cutter is not None and not cutter.hit:
            tail = cutter.flush()
            shown.append(tail)
            if req.stream and tail:
                job.post("chunk", Chunk(tail, "flush"))
        if gen is None:  # cut short by a stop string: rebuild what was generated from the events
            assert events is not None
            text = "".join(shown)
            doc, ids, stats = events.finish(text)
            raw = e.tokenizer.decode(ids, skip_special_tokens=False)
            return GenResult(text, "stop", len(req.ids), stats.tokens, stats.as_dict(),
                             render_markup(doc), raw, True)
        hit = cutter is not None and cutter.hit
        text = "".join(shown) if hit else gen.text
        return GenResult(text, "stop" if hit else gen.finish_reason, len(req.ids), gen.stats.tokens,
                         gen.stats.as_dict(), render_markup(gen.doc), gen.raw, False)
