"""Where the engine keeps its KV cache and slot tables: grown step by step (eager) or preallocated (fast).

One answer's view of its cache (`DynamicKV`, or `Slots` of a `StaticKV`) gives `feed(ids, pos, grp, br) ->
logits [n, V]` for tokens of any owners, the fed slots' position / group / branch tables (`pos`, `grp`, `br`,
in feed order) and `reposition` (same-re moves a closed group's keys).

The fast path keeps one preallocated cache per engine, shared by every answer running on it (the cache manager
of continuous batching, `aspd.engine.batch`). A request is one more level of owner: every slot carries its
position, group, branch, request and feed number, and a token sees a slot only if it is its own request's and
fed no later than itself (then the group/branch rule). Slots come from a free list (lowest first) and go back
when the request ends, so requests of any lengths share the cache without fragmentation, and a slot not
written yet, or freed, is never visible. A step writes only its new slots (KV and tables); the step's mask rows
are derived from the tables on the device. `StaticKV.run` is the one place the fast path calls the model
(`_step`). On CUDA, steps of up to `max(BUCKETS)` tokens replay a CUDA graph captured once per bucket size and
span: a step reads the slots up to the smallest span (1,024 x 4^i, or the capacity) that holds every slot in use,
so a few short requests in a large cache do not read all of it. Padding rows write to scratch slots of a padding
owner that no real token sees, and read slot 0 (a row that sees nothing would turn into NaN).
"""

from __future__ import annotations

import heapq
import inspect
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from aspd.attention import model_mask, use_decode_attention
from aspd.engine.rope import rerotate_keys
from aspd.layout import MAIN, visibility

# Graph sizes; a step of k tokens replays the smallest bucket >= k. Up to 16 covers every lockstep step (8
# branches + <|/para|> by default); 32 and 64 cover most group openings (all prefixes in one forward); 128 and
# 256 the steps of many requests batched together.
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SPAN_MIN, SPAN_FACTOR = 1024, 4  # the slots a graph reads: SPAN_MIN * SPAN_FACTOR**i, or the whole capacity
ENGINES = ("eager", "fast")


@cache
def _cache_keyword(forward: Any) -> str:
    params = inspect.signature(forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: Any, kv_cache: Any) -> dict[str, Any]:
    """The keyword a model's forward takes its KV cache by: `cache` from transformers 5.24 on (where
    `past_key_values` still works but is deprecated, to go in 5.40), `past_key_values` before (5.17 has no
    `cache`). Read from the forward's own signature, so it follows the installed version and the architecture."""
    return {_cache_keyword(type(model).forward): kv_cache, "use_cache": True}


def resolve_engine(engine: str) -> str:
    """`auto` is the fast engine: graphs on CUDA, the same static cache without graphs elsewhere."""
    if engine == "auto":
        return "fast"
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of auto, {', '.join(ENGINES)}; not {engine!r}")
    return engine


class DynamicKV:
    """The reference path: an HF DynamicCache, slot tables grown by concatenation, masks over every fed slot."""

    def __init__(self, eng: Any):
        self.e = eng
        self.clear()

    def clear(self) -> None:
        """Forget every fed slot: the next feed starts a new sequence (a decoder's next stage)."""
        from transformers import DynamicCache

        self.cache = DynamicCache()  # every layer keeps every slot; sliding windows live in the mask
        empty = lambda: torch.empty(0, dtype=torch.long, device=self.e.device)  # noqa: E731
        self.pos, self.grp, self.br = empty(), empty(), empty()

    @property
    def length(self) -> int:
        return self.pos.numel()

    def feed(self, ids: list[int], pos: list[int], grp: list[int], br: list[int],
             rows: torch.Tensor | None = None) -> torch.Tensor:
        """rows: an explicit bool [k, fed slots] visibility (PASTA) instead of the group/branch rule."""
        e = self.e
        n0 = self.length
        t = lambda xs: torch.tensor(xs, dtype=torch.long, device=e.device)  # noqa: E731
        q_pos, q_grp, q_br = t(pos), t(grp), t(br)
        self.pos = torch.cat([self.pos, q_pos])
        self.grp = torch.cat([self.grp, q_grp])
        self.br = torch.cat([self.br, q_br])
        k_order = torch.arange(self.length, device=e.device)
        if rows is not None:
            rows = rows.to(e.device)
            allowed = lambda w: rows if w is None else rows & ((q_pos[:, None] - self.pos[None, :]) < w)  # noqa: E731
        else:
            allowed = lambda w: visibility(q_grp, q_br, k_order[n0:], self.grp, self.br, k_order,  # noqa: E731
                                           e.mask_mode, q_pos=q_pos, k_pos=self.pos, window=w)
        mask = model_mask(e.windows, allowed, e.mask_dtype)
        out = e.model(input_ids=t(ids)[None], position_ids=q_pos[None], attention_mask=mask,
                      **cache_kwargs(e.model, self.cache))
        return out.logits[0]

    def reposition(self, idx: torch.Tensor, new_pos: torch.Tensor) -> None:
        """Move the keys of the fed slots `idx` (feed order) to `new_pos` (RoPE re-rotation) and record it."""
        rerotate_keys(self.e.model, self.cache, idx, self.pos[idx], new_pos)
        self.pos[idx] = new_pos


class _SlotLayer(CacheLayerMixin):
    """A preallocated layer that writes new keys/values at the slots its owner names for the current forward."""

    is_compileable = True
    is_sliding = False  # windows are applied in the mask; every layer keeps every slot

    def __init__(self, owner: StaticKV):
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        cap = self.owner.capacity
        self.keys = key_states.new_zeros(b, h, cap, d)
        self.values = value_states.new_zeros(b, h, cap, value_states.shape[-1])
        self.is_initialized = True

    def grow(self, capacity: int, keep: int) -> None:
        if not self.is_initialized:
            return
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros(*old.shape[:2], capacity, old.shape[-1])
            new[:, :, :keep] = old[:, :, :keep]
            setattr(self, name, new)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        slots, span = self.owner.write, self.owner.span
        self.keys.index_copy_(2, slots, key_states)
        self.values.index_copy_(2, slots, value_states)
        return self.keys[:, :, :span], self.values[:, :, :span]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.span, 0

    def get_seq_length(self) -> int:
        return self.owner.span

    def get_max_length(self) -> int:
        return self.owner.capacity


class _Graph:
    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: torch.Tensor, logits: torch.Tensor,
                 rows: torch.Tensor | None = None):
        self.graph, self.inputs, self.logits, self.rows = graph, inputs, logits, rows


FREE, PAD = -1, -2  # request ids of a free slot and of the padding rows' scratch slots (seen by no request)


@dataclass
class Part:
    """One request's tokens in a batched forward. rows: explicit bool [k, its slots so far + k] visibility in
    the request's own feed order (PASTA), instead of the group/branch rule (other parts keep the rule)."""

    req: int
    ids: list[int]
    pos: list[int]
    grp: list[int]
    br: list[int]
    rows: torch.Tensor | None = None


class StaticKV:
    """The fast path's cache: preallocated KV and slot tables, shared by every request of one engine."""

    def __init__(self, eng: Any, capacity: int = 1024, *, bucketed: bool | None = None,
                 compile: bool | None = None):
        """bucketed: pad small steps to bucket sizes and read a fixed span of slots, as graphs must (default: on
        CUDA, where the buckets are replayed as CUDA graphs, or when compiling). On CPU it runs the graph
        computation without graphs. compile: the bucketed step through torch.compile (`aspd.engine.compiled`;
        default: the engine's `compile`, else on CUDA only)."""
        from aspd.engine.compiled import CompiledStep, decode_attention_on, resolve_compile

        self.e = eng
        self.graphs_on = eng.device.type == "cuda"
        want = resolve_compile(getattr(eng, "compile", None) if compile is None else compile, eng.device)
        self.bucketed = (self.graphs_on or want) if bucketed is None else bucketed
        self.compiled = CompiledStep(self._step) if want and self.bucketed else None
        if self.compiled is not None and self.graphs_on and decode_attention_on():
            use_decode_attention(eng.model)  # torch's SDPA kernel for a few query rows is the slow part of a step
        self.capture_seconds: dict[str, float] = {}  # per captured bucket: warm-up (compiling included) + capture
        self.headroom = BUCKETS[-1] if self.bucketed else 0  # scratch slots for the largest bucket's padding
        cfg = eng.model.config.get_text_config() if hasattr(eng.model.config, "get_text_config") else eng.model.config
        self.layers = [_SlotLayer(self) for _ in range(cfg.num_hidden_layers)]
        self.cache = Cache(layers=self.layers)
        self._cache_kw = cache_kwargs(eng.model, self.cache)  # read once: compiled steps need no signature lookup
        self.capacity = 0
        self.write = torch.empty(0, dtype=torch.long, device=eng.device)  # slots the current forward writes
        self.span = 0  # key slots the current forward reads
        self.graphs: dict[tuple[int, bool, int], _Graph] = {}  # (bucket, explicit rows, span)
        self.span_min = SPAN_MIN
        self.pool: Any = None
        self._tables = torch.zeros(5, 0, dtype=torch.long, device=eng.device)  # pos, grp, br, request, feed no.
        self._free: list[int] = []  # a heap: the lowest free slot first keeps the used span short
        self.owned: dict[int, list[int]] = {}  # request -> its slots in feed order
        self.high = 0  # one past the highest slot in use (what a CPU step reads)
        self._seq = 0  # feed numbers, increasing over all requests
        self._next_req = 0
        self._grow(capacity + self.headroom)  # `capacity` slots for requests, the headroom for padding

    # ------------------------------------------------------------------ the cache manager

    @property
    def length(self) -> int:
        """Slots in use by all requests."""
        return sum(len(s) for s in self.owned.values())

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def spans(self) -> list[int]:
        """The spans a bucketed step may read, smallest first; the last is the whole capacity (a span is kept only
        where it reads at most half of it)."""
        out, s = [], self.span_min
        while 2 * s <= self.capacity:
            out.append(s)
            s *= SPAN_FACTOR
        return [*out, self.capacity]

    def span_for(self, high: int) -> int:
        return next(s for s in self.spans() if s >= high)

    def open(self) -> Slots:
        """A new request with no slots yet."""
        req = self._next_req
        self._next_req += 1
        self.owned[req] = []
        return Slots(self, req)

    def close(self, req: int) -> None:
        """The request ends: its slots are free again (their stale contents are invisible until rewritten)."""
        slots = self.owned.pop(req, [])
        if slots:
            self._tables[3, torch.tensor(slots, dtype=torch.long, device=self.e.device)] = FREE
            for s in slots:
                heapq.heappush(self._free, s)
            # A CPU step reads up to the highest slot in use: shrink it as requests leave.
            self.high = max((max(s) for s in self.owned.values() if s), default=-1) + 1

    def _alloc(self, req: int, k: int) -> list[int]:
        if k > len(self._free):
            need = self.capacity - len(self._free) + k + self.headroom
            self._grow(max(2 * self.capacity, -(-need // 256) * 256))
        out = [heapq.heappop(self._free) for _ in range(k)]
        self.owned[req] += out
        self.high = max(self.high, max(out, default=-1) + 1)
        return out

    def _grow(self, capacity: int) -> None:
        old, old_cap = self._tables, self.capacity
        self._tables = torch.zeros(5, capacity, dtype=torch.long, device=self.e.device)
        self._tables[3] = FREE
        self._tables[:, :old_cap] = old
        scratch = range(old_cap - self.headroom, old_cap) if old_cap else range(0)
        self._tables[3, list(scratch)] = FREE
        for s in [*scratch, *range(old_cap, capacity - self.headroom)]:
            heapq.heappush(self._free, s)
        self._tables[3, capacity - self.headroom :] = PAD
        for layer in self.layers:
            layer.grow(capacity, old_cap)
        self.capacity = capacity
        self.graphs.clear()  # captured graphs point at the old buffers
        self.pool = None

    # ------------------------------------------------------------------ the model runner

    def _step(self, inputs: torch.Tensor, span: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """inputs [7, k]: ids, pos, grp, br, request, feed number, slot. Writes the tables and the cache at `slot`;
        reads `span` slots. rows: explicit bool [k, span] visibility (PASTA) in place of the owner rule, for the
        rows that have any (the rows of requests without explicit visibility are all False)."""
        e = self.e
        ids, pos, grp, br, req, seq, slot = inputs
        self._tables.index_copy_(1, slot, inputs[1:6])
        k_pos, k_grp, k_br, k_req, k_seq = self._tables[:, :span]
        own = req[:, None] == k_req[None, :]  # a request's slots are visible to that request only
        pad = (req == PAD)[:, None]
        # Padding rows also read slot 0: their own scratch slots may lie beyond the span.
        own |= pad & (torch.arange(span, device=req.device) == 0)[None, :]
        rule = lambda w: own & (visibility(grp, br, seq, k_grp, k_br, k_seq, e.mask_mode,  # noqa: E731
                                           q_pos=pos, k_pos=k_pos, window=w) | pad)
        if rows is None:
            allowed = rule
        else:  # a row with explicit visibility sees at least itself; the other requests' rows are all False
            explicit = rows.any(-1, keepdim=True)
            allowed = lambda w: torch.where(  # noqa: E731
                explicit, rows if w is None else rows & ((pos[:, None] - k_pos[None, :]) < w), rule(w))
        mask = model_mask(e.windows, allowed, e.mask_dtype)
        self.write, self.span = slot, span
        out = e.model(input_ids=ids[None], position_ids=pos[None], attention_mask=mask, **self._cache_kw)
        return out.logits[0]

    def _inputs(self, parts: Sequence[Part], slots: list[int], rows: int) -> torch.Tensor:
        """Host tensor [7, rows]: the real tokens, then padding rows (token 0 at position 0 of the padding owner,
        at the scratch slots)."""
        ids, pos, grp, br, req = [], [], [], [], []
        for p in parts:
            ids += p.ids
            pos += p.pos
            grp += p.grp
            br += p.br
            req += [p.req] * len(p.ids)
        k = len(ids)
        pad = rows - k
        scratch = list(range(self.capacity - self.headroom, self.capacity - self.headroom + pad))
        seq = list(range(self._seq, self._seq + rows))
        self._seq += rows
        return torch.tensor([ids + [0] * pad, pos + [0] * pad, grp + [MAIN] * pad, br + [MAIN] * pad,
                             req + [PAD] * pad, seq, slots + scratch], dtype=torch.long)

    def _rows(self, parts: Sequence[Part], size: int, span: int) -> torch.Tensor:
        """Explicit rows in slot columns [size, span]: a part's own rows where it has them, all False (the owner
        rule) for the other parts; a padding row sees slot 0 (no fully masked row)."""
        out = torch.zeros(size, span, dtype=torch.bool)
        k = 0
        for part in parts:
            if part.rows is not None:
                n, w = part.rows.shape
                cols = torch.tensor(self.owned[part.req][:w], dtype=torch.long)
                out[k : k + n, cols] = part.rows.cpu()
            k += len(part.ids)
        out[k:, 0] = True
        return out

    def run(self, parts: Sequence[Part]) -> list[torch.Tensor]:
        """One forward for the tokens of every part (one request each); returns each part's logits [k, V]."""
        k = sum(len(p.ids) for p in parts)
        slots = [s for p in parts for s in self._alloc(p.req, len(p.ids))]
        explicit = any(p.rows is not None for p in parts)
        if self.bucketed and k <= BUCKETS[-1]:
            size = next(b for b in BUCKETS if b >= k)
            span = self.span_for(self.high)
            padded = self._inputs(parts, slots, size)
            wide = self._rows(parts, size, span) if explicit else None
            key = (size, explicit, span)
            g = (self.graphs.get(key) or self._capture(*key)) if self.graphs_on else None
            if g is not None:
                g.inputs.copy_(padded.pin_memory(), non_blocking=True)
                if g.rows is not None and wide is not None:
                    g.rows.copy_(wide.pin_memory(), non_blocking=True)
                g.graph.replay()
                logits = g.logits[:k].clone()  # the graph overwrites its output at the next replay
            else:
                dev = wide.to(self.e.device) if wide is not None else None
                logits = self._bucket_step(padded.to(self.e.device), span, dev)[:k]
        else:
            inputs = self._inputs(parts, slots, k).to(self.e.device)
            dev = self._rows(parts, k, self.high).to(self.e.device) if explicit else None
            logits = self._step(inputs, self.high, dev)
        return list(logits.split([len(p.ids) for p in parts]))

    def warm(self, progress: bool = False) -> dict[str, float]:
        """Compile and capture every bucket at every span now (padding rows only), so that no answer pays for it
        later; returns the seconds per bucket ("size" at the whole capacity, "size@span" below it). A no-op for an
        unbucketed cache. The capacity must not grow afterwards: a larger cache is new buffers and new shapes, so
        every bucket is captured, and compiled, again. progress: a bar on stderr (compiling cold takes minutes)."""
        if not self.bucketed:
            return {}
        from tqdm import tqdm

        what = "compiling and capturing" if self.compiled is not None else "capturing" if self.graphs_on else "running"
        shapes = [(span, size) for span in self.spans() for size in BUCKETS]
        with torch.inference_mode():
            for span, size in tqdm(shapes, desc=f"aspd: {what} the decode step", unit="shape", leave=False,
                                   disable=not progress):
                t0 = time.perf_counter()
                if self.graphs_on:
                    if (size, False, span) not in self.graphs:
                        self._capture(size, False, span)
                else:
                    inputs = self._inputs([], [], size).to(self.e.device)
                    if not self.layers[0].is_initialized:
                        self._step(inputs, span)  # allocates the cache, outside the compiled code
                    self._bucket_step(inputs, span)
                    self.capture_seconds.setdefault(self._key(size, False, span),
                                                    round(time.perf_counter() - t0, 3))
        return dict(self.capture_seconds)

    def _key(self, size: int, explicit: bool, span: int) -> str:
        return f"{size}{'+rows' if explicit else ''}{'' if span == self.capacity else f'@{span}'}"

    def _bucket_step(self, inputs: torch.Tensor, span: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """A bucketed step: compiled when the engine compiles (and compiling has not failed), else eager. The cache
        layers allocate their buffers at their first write, which stays out of the compiled code."""
        if self.compiled is not None and self.layers[0].is_initialized:
            return self.compiled(inputs, span, rows)
        return self._step(inputs, span, rows)

    def _capture(self, size: int, explicit: bool, span: int) -> _Graph | None:
        """Warm up and capture one bucket at one span; None (and graphs off for this engine) if the model cannot be
        captured. A compiled step that cannot be captured is dropped first, and the eager step captured instead."""
        t0 = time.perf_counter()
        try:
            g = self._try_capture(size, explicit, span)
            self.capture_seconds[self._key(size, explicit, span)] = round(time.perf_counter() - t0, 3)
            return g
        except Exception as err:  # a model with host syncs or dynamic control flow in its forward
            if self.compiled is not None and self.compiled.active:
                self.compiled.error = f"CUDA graph capture of the compiled step failed: {type(err).__name__}: {err}"
                warnings.warn(self.compiled.error[:500] + "; capturing the eager step instead", RuntimeWarning,
                              stacklevel=3)
                self.graphs.clear()
                self.pool = None
                return self._capture(size, explicit, span)
            warnings.warn(f"CUDA graph capture failed ({type(err).__name__}: {err}); the fast engine goes on "
                          "without graphs", RuntimeWarning, stacklevel=3)
            self.graphs_on = False
            self.graphs.clear()
            return None

    def _try_capture(self, size: int, explicit: bool, span: int) -> _Graph:
        # Warm-up runs write padding rows at the scratch slots: harmless, as every padding row is.
        inputs = self._inputs([], [], size).to(self.e.device)
        rows = self._rows([], size, span).to(self.e.device) if explicit else None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # the first may run eagerly (cache allocation), the next compiles and tunes
                self._bucket_step(inputs, span, rows)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self._bucket_step(inputs, span, rows)
        self.pool = graph.pool()
        self.graphs[(size, explicit, span)] = _Graph(graph, inputs, logits, rows)
        return self.graphs[(size, explicit, span)]


class Slots:
    """One request's view of a StaticKV: its slots' tables in feed order, and `feed` for a forward of its own."""

    def __init__(self, kv: StaticKV, req: int):
        self.kv, self.req = kv, req
        self.cache = kv.cache

    def _idx(self) -> torch.Tensor:
        return torch.tensor(self.kv.owned[self.req], dtype=torch.long, device=self.kv.e.device)

    @property
    def length(self) -> int:
        return len(self.kv.owned[self.req])

    @property
    def pos(self) -> torch.Tensor:
        return self.kv._tables[0, self._idx()]

    @property
    def grp(self) -> torch.Tensor:
        return self.kv._tables[1, self._idx()]

    @property
    def br(self) -> torch.Tensor:
        return self.kv._tables[2, self._idx()]

    def feed(self, ids: list[int], pos: list[int], grp: list[int], br: list[int],
             rows: torch.Tensor | None = None) -> torch.Tensor:
        """rows: explicit bool [k, slots fed so far + k] visibility (PASTA) instead of the group/branch rule."""
        return self.kv.run([Part(self.req, ids, pos, grp, br, rows)])[0]

    def reposition(self, idx: torch.Tensor, new_pos: torch.Tensor) -> None:
        """Move the keys of this request's slots `idx` (feed order) to `new_pos` (RoPE re-rotation)."""
        phys = self._idx()[idx]
        rerotate_keys(self.kv.e.model, self.kv.cache, phys, self.kv._tables[0, phys], new_pos)
        self.kv._tables[0, phys] = new_pos

    def clear(self) -> None:
        """Give every slot back but stay open: the next feed starts a new sequence (a decoder's next stage)."""
        self.kv.close(self.req)
        self.kv.owned[self.req] = []

    def close(self) -> None:
        self.kv.close(self.req)
