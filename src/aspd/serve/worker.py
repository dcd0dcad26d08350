"""The one model thread: continuous batching of the jobs (`aspd.engine.batch`), results handed to the event loop.

Every running job's live streams step in one forward; jobs join and leave at step boundaries. Admission is
counted here (running + waiting <= max_batch + max_queue) so that the HTTP layer can answer 503 at once; a job
the batch or the cache cannot take yet waits in the queue. All tokenizer work of a job (reading-order view,
stop strings, rebuilding a stopped answer) happens on this thread too, so the engine's tokenizer is never used
from two threads at once.
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
from aspd.engine.batch import DEFAULT_MAX_BATCH, DEFAULT_MAX_SLOTS, BatchEngine, BatchRequest
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
    messages: str | list[dict[str, str]] | None = None  # sot: the question (`ids` then only count the prompt)


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
        self.started = 0.0
        self.outbox: list[tuple[Job, tuple[str, Any]]] | None = None  # the worker's, once it takes the job

    def post(self, kind: str, value: Any = None) -> None:
        if self.outbox is not None:  # the worker hands a step's items to the event loop at once
            self.outbox.append((self, (kind, value)))
        else:
            _deliver(self.loop, [(self, (kind, value))])


def _deliver(loop: asyncio.AbstractEventLoop, items: list[tuple[Job, tuple[str, Any]]]) -> None:
    def put() -> None:
        for job, item in items:
            job.items.put_nowait(item)

    try:
        loop.call_soon_threadsafe(put)
    except RuntimeError:  # the event loop is gone (server shutting down)
        pass


class Worker:
    """Runs jobs on a dedicated thread, batched: up to `max_batch` at once, the rest first come first served."""

    def __init__(self, engine: HybridEngine, max_queue: int, *, max_batch: int = DEFAULT_MAX_BATCH,
                 max_slots: int = DEFAULT_MAX_SLOTS):
        self.engine = engine
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.batch = BatchEngine(engine, max_batch=max_batch, max_slots=max_slots)
        self.waiting = 0
        self.running = 0
        self.served = 0
        self.avg_seconds = 5.0  # moving average of job time, for Retry-After
        self._lock = threading.Lock()
        self._q: queue.Queue[Job | None] = queue.Queue()
        self._jobs: set[Job] = set()  # running, for stop()
        # Items for the event loop, handed over once per step: one wake-up of the loop for every token of every
        # request in the step, instead of one each (which took the model thread's time under load).
        self._outbox: list[tuple[Job, tuple[str, Any]]] = []
        self._thread = threading.Thread(target=self._loop, name="aspd-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        with self._lock:
            for job in self._jobs:
                job.cancelled.set()
        self._q.put(None)

    def submit(self, job: Job) -> bool:
        """False when max_batch running + max_queue waiting are already taken."""
        with self._lock:
            if self.waiting + self.running >= self.max_batch + self.max_queue:
                return False
            self.waiting += 1
            job.state = "waiting"
        self._q.put(job)
        return True

    def cancel(self, job: Job) -> None:
        """A waiting job leaves the queue at once; a running one stops at the next step."""
        with self._lock:
            if job.state == "waiting":
                self.waiting -= 1
                job.state = "cancelled"
        job.cancelled.set()

    def retry_after(self) -> int:
        with self._lock:
            ahead = self.waiting + self.running
        rounds = -(-(ahead + 1) // self.max_batch)  # batches to go before a new request would start
        return max(1, min(60, round(self.avg_seconds * rounds)))

    def _loop(self) -> None:
        while True:
            # Idle: sleep until a job comes. Busy: take whatever has come, between two steps.
            jobs: list[Job | None] = []
            try:
                jobs.append(self._q.get(block=not self.batch.busy))
                while True:
                    jobs.append(self._q.get_nowait())
            except queue.Empty:
                pass
            for job in jobs:
                if job is None:  # shutting down: every job still here leaves as cancelled
                    for r in [*self.batch.running, *self.batch.waiting]:
                        r.cancel()
                    self.batch.step()
                    self._flush()
                    return
                self._admit(job)
            self.batch.step()
            self._flush()

    def _flush(self) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, tuple[str, Any]]]] = {}
        for job, item in self._outbox:
            by_loop.setdefault(job.loop, []).append((job, item))
        self._outbox.clear()
        for loop, items in by_loop.items():
            _deliver(loop, items)

    def _admit(self, job: Job) -> None:
        with self._lock:
            if job.state != "waiting":
                return  # cancelled while it waited
        job.outbox = self._outbox
        session = _Session(self.engine, job)
        r = BatchRequest(job.req.ids, job.req.mode, job.req.sampling, job.req.limits, on_event=session.on_event,
                         on_start=lambda _r: self._started(job), on_done=lambda r: self._done(job, session, r),
                         messages=job.req.messages, cancelled=job.cancelled)
        try:
            self.batch.submit(r)
        except Exception as e:  # noqa: BLE001 - a request the batch refuses fails alone
            self._started(job)
            r.error, r.done = e, True
            self._done(job, session, r)

    def _started(self, job: Job) -> None:
        with self._lock:
            if job.state == "waiting":
                self.waiting -= 1
            self.running += 1
            job.state = "running"
            job.started = time.perf_counter()
            self._jobs.add(job)

    def _done(self, job: Job, session: _Session, r: BatchRequest) -> None:
        kind, value = "cancelled", None
        if job.state == "running":
            try:
                kind, value = session.finish(r.result, r.error)
            except Exception as e:  # noqa: BLE001 - any failure goes back to the request, the thread lives on
                log.exception("request %s failed", job.req.request_id)
                kind, value = "error", e
        # Free the slot before answering, so a client's next request never sees its own old job.
        with self._lock:
            if job.state == "running":
                self.running -= 1
                self._jobs.discard(job)
                self.served += 1
                self.avg_seconds = 0.8 * self.avg_seconds + 0.2 * (time.perf_counter() - job.started)
            elif job.state == "waiting":  # cancelled before it started
                self.waiting -= 1
            job.state = "done"
        job.post(kind, value)


class _Session:
    """One job's view of its events: the reading-order text, stop strings, streamed chunks, the final result."""

    def __init__(self, engine: HybridEngine, job: Job):
        req = job.req
        self.e, self.job, self.req = engine, job, req
        self.view = ReadingOrderView(engine) if (req.stream or req.stops) else None
        self.cutter = StopCutter(req.stops) if req.stops else None
        self.per_stream = StreamText(engine) if req.branch_deltas else None
        self.events = EventLog(engine, len(req.ids)) if req.stops else None
        self.shown: list[str] = []
        self.groups = -1

    def on_event(self, ev: Event) -> None:
        req, job, cutter = self.req, self.job, self.cutter
        if job.cancelled.is_set():
            raise _Abort
        if ev.kind == "open":
            self.groups += 1
        if self.events is not None:
            self.events.push(ev)
        content = self.view.push(ev) if self.view is not None else ""
        if cutter is not None:
            content = cutter.push(content)
        self.shown.append(content)
        per_stream = self.per_stream
        if req.stream and (content or (per_stream is not None and ev.kind in ("token", "open", "close"))):
            stream = "main" if ev.stream == MAIN_STREAM else f"g{ev.stream[0]}b{ev.stream[1]}"
            delta = per_stream.delta(ev) if per_stream is not None and ev.kind == "token" else ""
            g = self.groups if ev.kind in ("open", "close") else None
            job.post("chunk", Chunk(content, ev.kind, stream, delta, ev.titles, g))
        if cutter is not None and cutter.hit and ev.kind != "done":
            raise _StopHit

    def finish(self, gen: Generation | None, error: BaseException | None) -> tuple[str, Any]:
        """(kind, value) for the event loop: done + GenResult, cancelled, or error."""
        e, req, cutter = self.e, self.req, self.cutter
        if isinstance(error, _Abort) or (gen is None and error is None):
            log.info("request %s cancelled (client disconnected)", req.request_id)
            return "cancelled", None
        if error is not None and not isinstance(error, _StopHit):
            log.error("request %s failed", req.request_id, exc_info=error)
            return "error", error
        if cutter is not None and not cutter.hit:
            tail = cutter.flush()
            self.shown.append(tail)
            if req.stream and tail:
                self.job.post("chunk", Chunk(tail, "flush"))
        if gen is None:  # cut short by a stop string: rebuild what was generated from the events
            assert self.events is not None
            text = "".join(self.shown)
            doc, ids, stats = self.events.finish(text)
            raw = e.tokenizer.decode(ids, skip_special_tokens=False)
            return "done", GenResult(text, "stop", len(req.ids), stats.tokens, stats.as_dict(),
                                     render_markup(doc), raw, True)
        hit = cutter is not None and cutter.hit
        text = "".join(self.shown) if hit else gen.text
        return "done", GenResult(text, "stop" if hit else gen.finish_reason, len(req.ids), gen.stats.tokens,
                                 gen.stats.as_dict(), gen.markup_text(), gen.raw, False)
