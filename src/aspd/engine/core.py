"""The hybrid decoding engine: serial and parallel decoding in one sequence and one KV cache (DESIGN.md s. 4).

Every fed token gets a cache slot with a position id and an owner (main, or (group, branch)). Masks for the new
tokens are built from the slot tables with the same `visibility` rule training uses, so cache order never
matters and nothing is ever re-prefilled.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import torch

from aspd.attention import layer_windows, mask_dtype
from aspd.engine.answer import AnswerBuilder
from aspd.engine.kv import DynamicKV, Slots, StaticKV, resolve_engine
from aspd.engine.sampling import (
    MAIN_STREAM,
    BatchSampler,
    Pending,
    SamplingParams,
    Stream,
    StreamSampler,
    sample_many,
)
from aspd.engine.text import Detokenizer
from aspd.engine.types import Event, Generation, Limits, Stats
from aspd.layout import MAIN, MaskMode, PositionPlanner, PosMode
from aspd.markup import flatten
from aspd.pasta.tokens import PASTA_TAGS, PastaIds
from aspd.sample import Message, end_of_turn_ids, prompt_ids
from aspd.tokens import DEFAULT_TOKENS, ControlIds, add_control_tokens, branch_prefix_ids

MODES = ("hybrid", "serial", "pasta", "sot")
STEPPED = MODES  # the modes whose decoder can be stepped, so batched with other requests: all of them
__all__ = ["MAIN_STREAM", "MODES", "STEPPED", "Draw", "Event", "Feed", "Generation", "HybridEngine", "Limits",
           "Stats", "Stepped"]


@dataclass
class Feed:
    """What a stepped decoder asks to feed next: tokens of any of its owners, in one forward. rows: explicit
    bool [k, its slots so far + k] visibility in its own feed order (PASTA) instead of the group/branch rule."""

    ids: list[int]
    pos: list[int]
    grp: list[int]
    br: list[int]
    rows: torch.Tensor | None = None


@dataclass
class Draw:
    """What a stepped decoder asks after a forward: tokens to sample. The driver samples them (a batch samples
    every request's draws together, `sample_many`), reads them and sends the list back; a batch reads every
    request's tokens with one host sync instead of one each."""

    pending: Pending


Steps = Generator[Feed | Draw, Any, Generation]  # yields Feed (gets logits back) or Draw (gets list[int] back)


class Stepped:
    """A decoder that can be stepped: `steps()` is a generator that yields the next `Feed` and takes its logits
    back, so a driver decides when (and beside which other requests) each forward runs; `execute()` runs it
    alone on its cache view `kv`. Subclasses set `kv`, `stats`, `record` and `on_event`."""

    kv: DynamicKV | Slots
    stats: Stats
    record: bool
    on_event: Callable[[Event], None] | None
    slots: list[tuple[int, int, int, int]]  # with `record`: every fed token (id, position, group, branch)
    logits: list[torch.Tensor]  # with `record`: its logits

    def steps(self) -> Steps:
        raise NotImplementedError

    def emit(self, ev: Event) -> None:
        if self.on_event is not None:
            self.on_event(ev)

    def step(self, ids: list[int], pos: list[int], grp: list[int], br: list[int],
             rows: torch.Tensor | None = None) -> Generator[Feed, torch.Tensor, torch.Tensor]:
        """Ask the driver to feed tokens (any owners) in one forward; gives back their logits [n, V]."""
        logits = yield Feed(ids, pos, grp, br, rows)
        self.stats.forwards += 1
        if self.record:
            self.slots.extend(zip(ids, pos, grp, br, strict=True))
            self.logits.extend(logits.float().cpu())
        return logits

    def execute(self) -> Generation:
        """Run the answer alone: every feed is its own forward."""
        return run_alone(self.steps(), self.kv)


def run_alone(steps: Steps, kv: DynamicKV | Slots) -> Generation:
    """Drive a stepped decoder to its end, one forward of its own per feed."""
    feed = next(steps)
    while True:
        try:
            if isinstance(feed, Draw):
                feed = steps.send(sample_many([feed.pending])[0].tolist())
            else:
                feed = steps.send(kv.feed(feed.ids, feed.pos, feed.grp, feed.br, feed.rows))
        except StopIteration as done:
            return done.value



@dataclass
class _Branch:
    ids: list[int]  # everything fed for this branch so far (prefix included)
    start: int
    pending: int | None = None
    done: bool = False


class _BranchHistory(Sequence[int]):
    """A branch's token history for the sampler, the main stream's then its own, read in place instead of a copy of
    the whole answer so far per branch at every step of a group."""

    __slots__ = ("main", "own")

    def __init__(self, main: list[int], own: list[int]):
        self.main, self.own = main, own

    def __len__(self) -> int:
        return len(self.main) + len(self.own)

    def __iter__(self) -> Iterator[int]:
        return itertools.chain(self.main, self.own)

    @overload
    def __getitem__(self, i: int) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> list[int]: ...
    def __getitem__(self, i: int | slice) -> int | list[int]:
        n = len(self.main)
        if isinstance(i, slice) and i.step is None and i.stop is None and 0 <= (i.start or 0):
            start = i.start or 0  # the sampler's case: the tokens since its last draw
            return self.own[start - n :] if start >= n else self.main[start:] + self.own
        return [*self.main, *self.own][i]


class HybridEngine:
    """Decode a causal LM with adaptive serial-parallel structure. Works with any HF model taking 4D masks.

    engine: `fast` (default) keeps one preallocated cache per engine, replays CUDA graphs on a GPU and samples
    every stream in one batched draw; `eager` is the reference (a fresh growing cache per answer, one generator
    per stream). Both give the same greedy tokens. `generate` answers one prompt at a time (a lock);
    `aspd.engine.batch.BatchEngine` decodes many at once.
    compile: the fast engine's decode step through torch.compile (`aspd.engine.compiled`); default on CUDA.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        mask_mode: MaskMode | str = MaskMode.INDEP,
        pos_mode: PosMode | str = PosMode.SAME_SEQ,
        predict_scale: float = 10.0,
        predicted_length: int = 20,
        engine: str = "auto",
        promise_len: int = 1,
        compile: bool | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.ctrl: ControlIds = add_control_tokens(tokenizer)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            raise ValueError("the model has no rows for the control tokens; load an ASPD model or call "
                             "aspd.tokens.add_control_tokens(tokenizer, model) first")
        self.mask_mode = MaskMode(mask_mode)
        self.pos_mode = PosMode(pos_mode)
        self.predict_scale = predict_scale
        self.predicted_length = predicted_length
        self.promise_len = promise_len  # PASTA: positions each <promise/> reserves (as the model was trained)
        self.is_aspd_model = True
        self.windows = layer_windows(model.config)
        self.mask_dtype = mask_dtype(model)
        self.device = next(model.parameters()).device
        self.engine = resolve_engine(engine)
        self.compile = compile  # None: the fast engine decides by device (aspd.engine.compiled.resolve_compile)
        self._static: StaticKV | None = None
        self._lock = threading.Lock()
        self.eot = set(end_of_turn_ids(tokenizer))
        if tokenizer.eos_token_id is not None:
            self.eot.add(int(tokenizer.eos_token_id))
        self.vocab = model.get_output_embeddings().weight.shape[0]
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.context = int(getattr(cfg, "max_position_embeddings", None) or 1 << 30)
        c = self.ctrl
        self._ban_serial = self._ban([c.branch, c.branch_end, c.para_end, c.title_end])
        # The four serial bans by (title banned, <|para|> banned): built once, not per step of every request.
        self._serial_bans = {(t, p): self._ban([c.branch, c.branch_end, c.para_end, c.title_end,
                                                 *([c.title] if t else []), *([c.para] if p else [])])
                             for t in (False, True) for p in (False, True)}
        self._ban_branch = self._ban([c.title, c.title_end, c.para, c.para_end, c.branch])
        self._ban_in_title = self._ban([c.title, c.para, c.branch, c.branch_end, c.para_end, *self.eot])
        self._only_title_end = ~self._ban([c.title_end])
        self._only_branch_end = ~self._ban([c.branch_end])
        vocab = tokenizer.get_vocab()
        self.pasta: PastaIds | None = None  # the PASTA tag ids, when the model has rows for them
        if all(t in vocab for t in PASTA_TAGS.all()):
            ids = PastaIds(*(int(vocab[t]) for t in PASTA_TAGS.all()))
            self.pasta = ids if max(ids.all()) < self.vocab else None

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, device: str | None = None, dtype: str = "auto",
                        attn: str = "sdpa", mask_mode: str | None = None, pos_mode: str | None = None,
                        engine: str = "auto", **kw: Any) -> HybridEngine:
        """Load a model (registry name or folder). Mask/position modes default to the model's aspd.json.

        A plain (not ASPD-trained) model gets the control tokens with rows at the mean embedding, so it never
        picks them and answers serially; `engine.is_aspd_model` tells which case it was.
        """
        from transformers.utils import logging as hf_logging

        from aspd.loading import load_model, read_aspd_config

        hf_logging.disable_progress_bar()  # per-tensor load bars are noise for an engine user
        model, tok = load_model(name_or_path, device=device, dtype=dtype, attn=attn)
        meta = read_aspd_config(name_or_path)
        is_aspd = all(t in tok.get_vocab() for t in DEFAULT_TOKENS.all())
        add_control_tokens(tok, model)  # idempotent; also grows the rows if only the tokenizer had them
        engine = cls(model, tok, mask_mode=mask_mode or meta.get("mask_mode", MaskMode.INDEP.value),
                     pos_mode=pos_mode or meta.get("pos_mode", PosMode.SAME_SEQ.value), engine=engine,
                     **{"promise_len": int(meta.get("promise_len", 1)), **kw})
        engine.is_aspd_model = is_aspd
        return engine

    def _ban(self, ids: Sequence[int]) -> torch.Tensor:
        m = torch.zeros(self.vocab, dtype=torch.bool, device=self.device)
        m[list(ids)] = True
        return m

    # ------------------------------------------------------------------ public API

    def prompt_ids(self, prompt: str | Sequence[Message], *, chat: bool = True) -> list[int]:
        if isinstance(prompt, str):
            if not chat:
                return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
            prompt = [{"role": "user", "content": prompt}]
        return prompt_ids(self.tokenizer, prompt)

    @torch.inference_mode()
    def generate(
        self,
        prompt: str | Sequence[Message] | Sequence[int],
        *,
        mode: str = "hybrid",
        sampling: SamplingParams | None = None,
        limits: Limits | None = None,
        answer_prefix: Sequence[int] = (),
        on_event: Callable[[Event], None] | None = None,
        record: bool = False,
        chat: bool = True,
    ) -> Generation:
        """Answer a prompt (text, chat messages, or token ids). mode: hybrid | serial | pasta | sot.

        `pasta` decodes PASTA-LANG (a model trained with `aspd train --format pasta`); `sot` is
        Skeleton-of-Thought (any instruct model: a prompted outline, then every point expanded in one group).

        `answer_prefix` ids are fed as if the model had produced them (forced structure for tests and demos; for
        `sot`, the start of its skeleton). `record` keeps every slot and its logits for verification (for `sot`,
        those of its answer stage). Every mode runs through its stepped decoder (`decoder`), alone.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; not {mode!r}")
        sp, lim = sampling or SamplingParams(), limits or Limits()
        if mode == "sot":
            from aspd.engine.sot import reservation_sot

            capacity = reservation_sot(self, self._sot_prompt(prompt), lim)
        else:
            prompt = self.to_ids(prompt, chat=chat)
            capacity = len(prompt) + lim.max_new_tokens + 256
        return self.alone(lambda kv: self.decoder(prompt, kv, mode=mode, sampling=sp, limits=lim,  # type: ignore
                                                  answer_prefix=answer_prefix, on_event=on_event, record=record),
                          capacity)

    def alone(self, make: Callable[[DynamicKV | Slots], Stepped], capacity: int) -> Generation:
        """Run the decoder `make` builds on a cache view of its own (holding the fast engine's cache meanwhile)."""
        if self.engine == "eager":
            return make(DynamicKV(self)).execute()
        with self._lock:
            slots = self.static_kv(capacity).open()
            try:
                return make(slots).execute()
            finally:
                slots.close()

    @staticmethod
    def _sot_prompt(prompt: str | Sequence[Message] | Sequence[int]) -> str | Sequence[Message]:
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], dict)):
            return prompt  # type: ignore[return-value]
        raise ValueError("mode 'sot' rewrites the question into its own prompts: give text or messages")

    def to_ids(self, prompt: str | Sequence[Message] | Sequence[int], *, chat: bool = True) -> list[int]:
        """A prompt as token ids: ids as given, text or messages through the chat template (or not, chat=False)."""
        if prompt and isinstance(prompt, Sequence) and not isinstance(prompt, str) and isinstance(prompt[0], int):
            ids = [int(t) for t in prompt]  # type: ignore[union-attr]
        else:
            ids = self.prompt_ids(prompt, chat=chat)  # type: ignore[arg-type]
        if not ids:
            raise ValueError("empty prompt")
        return ids

    def static_kv(self, capacity: int = 1024) -> StaticKV:
        """The fast engine's one cache, shared by every answer (made on first use)."""
        if self._static is None:
            self._static = StaticKV(self, max(1024, capacity))
        return self._static

    def warm(self, capacity: int = 4096, *, progress: bool = False) -> dict[str, float]:
        """Size the fast engine's cache for `capacity` tokens and compile and capture its buckets before the
        first answer (seconds per bucket; {} for the eager engine). Without it, the first answer that needs a
        new bucket, or a larger cache, pays for compiling inside its own time: 41-64 s on an H200. Cold, the
        whole warm-up takes minutes on a GPU; `progress` shows a bar on stderr."""
        if self.engine == "eager":
            return {}
        with self._lock:
            return self.static_kv(capacity).warm(progress)

    def decoder(self, prompt: Sequence[int] | str | Sequence[Message], kv: DynamicKV | Slots, *,
                mode: str = "hybrid", sampling: SamplingParams | None = None, limits: Limits | None = None,
                answer_prefix: Sequence[int] = (), on_event: Callable[[Event], None] | None = None,
                record: bool = False) -> Stepped:
        """A stepped decoder of one answer over its cache view `kv`: `steps()` yields what to feed next and takes
        the logits back (`aspd.engine.batch` steps many in one forward); `execute()` runs it alone. Its sampler is
        its own (seeded by `sampling.seed`), whatever runs beside it, and so is everything else it changes.
        `prompt`: token ids, or for `sot` the question as text or chat messages (SoT writes its own prompts);
        for `sot`, `answer_prefix` forces the start of the skeleton (its first answer) in place of "1."."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; not {mode!r}")
        sp, lim = sampling or SamplingParams(), limits or Limits()
        if mode == "sot":
            from aspd.engine.sot import SotRun

            return SotRun(self, self._sot_prompt(prompt), kv, sp, lim, on_event, record=record,
                          skeleton_prefix=list(answer_prefix) or None)
        ids = self.to_ids(prompt)
        sampler = StreamSampler(sp, self.vocab, self.device) if isinstance(kv, DynamicKV) \
            else BatchSampler(sp, self.vocab, self.device)
        if mode == "pasta":
            from aspd.engine.pasta import PastaRun

            return PastaRun(self, ids, sp, lim, list(answer_prefix), on_event, record, kv, sampler,
                            self.promise_len)
        return _Run(self, ids, mode == "hybrid", sp, lim, list(answer_prefix), on_event, record, kv, sampler)


class _Run(Stepped):
    """One hybrid or serial answer as a stepped decoder. State: the cache view, position planner, sampler and
    the output being assembled."""

    def __init__(self, eng: HybridEngine, prompt: list[int], hybrid: bool, sp: SamplingParams, limits: Limits,
                 forced: list[int], on_event: Callable[[Event], None] | None, record: bool,
                 kv: DynamicKV | Slots, sampler: StreamSampler | BatchSampler):
        self.e, self.prompt, self.hybrid, self.sp, self.lim = eng, prompt, hybrid, sp, limits
        self.forced, self.on_event, self.record = forced, on_event, record
        self.kv, self.sampler = kv, sampler
        self.planner = PositionPlanner(eng.pos_mode, predict_scale=eng.predict_scale)
        self.stats = Stats(prefill_tokens=len(prompt))
        self.out = AnswerBuilder(eng.tokenizer, eng.ctrl, eng.eot)
        self.cut = False  # the budget ended a branch before its model did
        self.main_hist: list[int] = list(prompt)
        self.slots: list[tuple[int, int, int, int]] = []
        self.logits: list[torch.Tensor] = []
        self.detok: dict[Stream, Detokenizer] = {}
        self._titles: dict[tuple[int, ...], tuple[str, bool]] = {}  # title ids -> (text, prefix fits the cap)

    # ---------------------------------------------------------------- plumbing

    def emit_token(self, stream: Stream, tok: int) -> None:
        if self.on_event is None:
            return
        d = self.detok.setdefault(stream, Detokenizer(self.e.tokenizer))
        self.emit(Event("token", stream, tok, d.push(tok)))

    def draw(self, logits: torch.Tensor, streams: list[Stream], banned: list[torch.Tensor | None],
             hist: Sequence[Sequence[int]]) -> Generator[Draw, list[int], list[int]]:
        """Sample one token per stream; forced answer-prefix tokens take precedence on the main stream."""
        if streams == [MAIN_STREAM] and self.forced:
            return [self.forced.pop(0)]
        ban = None
        if any(b is not None for b in banned):
            if all(b is banned[0] for b in banned):  # a view, no copy: a serial step, or branches banned alike
                ban = banned[0][None].expand(len(banned), -1)  # type: ignore[index]
            else:
                ban = torch.stack([b if b is not None else torch.zeros_like(self.e._ban_serial) for b in banned])
        return (yield Draw(self.sampler.prepare(logits, streams, ban, hist)))

    # ---------------------------------------------------------------- main loop

    def steps(self) -> Steps:
        e, lim, c = self.e, self.lim, self.e.ctrl
        t0 = time.perf_counter()
        n = len(self.prompt)
        last = (yield from self.step(self.prompt, self.planner.take_main(n), [MAIN] * n, [MAIN] * n))[-1:]
        titles: list[list[int]] = []  # announced so far (ids), not yet known to open a group
        in_title: list[int] | None = None
        finish = "length"
        while self.stats.tokens < lim.max_new_tokens:
            if self.hybrid and in_title is None and self.blocked(titles):
                break  # the announced group no longer fits the budget or the context: the answer is cut here
            banned = self.serial_ban(titles, in_title) if self.hybrid else None
            tok = (yield from self.draw(last, [MAIN_STREAM], [banned], [self.main_hist]))[0]
            self.stats.tokens += 1
            self.out.main(tok)
            self.emit_token(MAIN_STREAM, tok)
            if tok in e.eot:
                finish = "stop"
                break
            if self.planner.next_main >= e.context - 1:
                break  # the token takes the last position: nothing may follow it
            if self.hybrid:
                if in_title is not None:
                    if tok == c.title_end:
                        titles.append(in_title)
                        in_title = None
                    else:
                        in_title.append(tok)
                elif tok == c.title:
                    in_title = []
                elif tok == c.para and self.can_open(titles):
                    last = yield from self.run_group(self.valid_titles(titles))
                    titles = []
                    continue
                else:  # text (or a <|para|> without a group to open): the pending titles were text
                    titles = []
            self.main_hist.append(tok)
            last = (yield from self.step([tok], self.planner.take_main(1), [MAIN], [MAIN]))[-1:]
        self.stats.seconds = time.perf_counter() - t0
        doc, ids = self.out.finish()
        text = flatten(doc)
        self.stats.visible_tokens = len(e.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
        raw = e.tokenizer.decode(ids, skip_special_tokens=False)
        self.emit(Event("done"))
        return Generation(doc, text, raw, self.stats, "length" if self.cut else finish, ids, self.slots,
                          self.logits)

    def serial_ban(self, titles: list[list[int]], in_title: list[int] | None) -> torch.Tensor:
        e, lim = self.e, self.lim
        if in_title is not None:
            return e._only_title_end if len(in_title) >= lim.max_title_tokens else e._ban_in_title
        no_title = self.stats.groups >= lim.max_groups or len(titles) >= lim.max_branches
        no_para = not self.can_open(titles, spend=1)  # the <|para|> itself would spend one token
        return e._serial_bans[no_title, no_para]

    def blocked(self, titles: list[list[int]]) -> bool:
        """The pending titles announce a group that may open but for the token budget or the context."""
        return (len(self.valid_titles(titles)) >= 2 and self.stats.groups < self.lim.max_groups
                and not self.can_open(titles, spend=1))

    def can_open(self, titles: list[list[int]], spend: int = 0) -> bool:
        """A group needs two distinct titles, a group left in the budget, context room for every branch, and
        token budget for every branch's end token (after `spend` more tokens)."""
        n = len(self.valid_titles(titles))
        room = self.e.context - self.planner.next_main - 2  # <|para|> and <|/para|> take one position each
        budget = self.lim.max_new_tokens - self.stats.tokens - spend
        return n >= 2 and self.stats.groups < self.lim.max_groups and room >= self.group_span(n) and budget >= n

    def group_span(self, n: int) -> int:
        """Positions a group of n branches may take at full caps (as the planner lays it out)."""
        cap = self.lim.max_branch_tokens
        if self.e.pos_mode is PosMode.PREDICT:  # each branch reserves scale x guess positions, or runs past them
            r = max(1, int(round(self.e.predicted_length * self.e.predict_scale)))
            return max(n * r, (n - 1) * r + cap)
        return n * cap

    def valid_titles(self, titles: list[list[int]]) -> list[str]:
        """Distinct non-empty titles whose branch can hold its prefix and end within max_branch_tokens, the
        first max_branches of them; fewer than two means no group."""
        out = []
        for ids in titles:
            s, fits = self.title_text(tuple(ids))
            if s and s not in out and fits:
                out.append(s)
        out = out[: self.lim.max_branches]
        return out if len(out) >= 2 else []

    def title_text(self, ids: tuple[int, ...]) -> tuple[str, bool]:
        """A title's text and whether its branch prefix fits the branch cap. Memoized: every serial step while
        titles are announced asks again for each title so far, and decoding plus re-encoding them was most of the
        engine's own work per step (profiled on CPU)."""
        if ids not in self._titles:
            e = self.e
            # One line of text: a title is a label, and markup titles cannot hold line breaks.
            s = " ".join(e.tokenizer.decode(list(ids), skip_special_tokens=True).split())
            fits = bool(s) and len(branch_prefix_ids(e.tokenizer, e.ctrl, s)) < self.lim.max_branch_tokens
            self._titles[ids] = (s, fits)
        return self._titles[ids]

    # ---------------------------------------------------------------- parallel groups

    def run_group(self, titles: list[str]) -> Generator[Feed | Draw, Any, torch.Tensor]:
        """Feed <|para|> and every branch prefix in one forward, decode branches in lockstep, close the group."""
        e, c = self.e, self.e.ctrl
        tp = time.perf_counter()
        g = self.stats.groups
        self.out.open(titles)
        self.main_hist.append(c.para)
        self.emit(Event("open", MAIN_STREAM, titles=tuple(titles)))
        prefixes = [branch_prefix_ids(e.tokenizer, c, t) for t in titles]
        para_pos = self.planner.take_main(1)
        guess = [e.predicted_length] * len(titles) if e.pos_mode is PosMode.PREDICT else None
        starts = self.planner.open_group(len(titles), guess)
        branches = [_Branch(list(p), s) for p, s in zip(prefixes, starts, strict=True)]
        ids, pos, grp, br = [c.para], list(para_pos), [MAIN], [MAIN]
        ends = []
        for b, p in enumerate(prefixes):
            ids += p
            pos += list(range(starts[b], starts[b] + len(p)))
            grp += [g] * len(p)
            br += [b] * len(p)
            ends.append(len(ids) - 1)
        logits = (yield from self.step(ids, pos, grp, br))[ends]
        yield from self.sample_branches(g, branches, list(range(len(branches))), logits)
        self.stats.branches.append(len(branches))
        while True:
            # Per-branch work runs at every step of a group, so it is kept to comprehensions (engine_overhead.py).
            live = [b for b, x in enumerate(branches) if not x.done]
            xs = [branches[b] for b in live]
            ids = [x.pending for x in xs]
            pos = [x.start + len(x.ids) for x in xs]
            grp, br = [g] * len(live), list(live)
            for x in xs:
                x.ids.append(x.pending)  # type: ignore[arg-type]
                x.done = x.pending == c.branch_end
            closing = all(x.done for x in branches)
            fuse = closing and e.pos_mode is not PosMode.SAME_RE
            if closing:
                lengths = [len(x.ids) for x in branches]
                if e.pos_mode is PosMode.SAME_RE:
                    re_starts = self.planner.rearranged_starts(lengths)
                self.planner.close_group(lengths)
            if fuse:  # <|/para|> rides in the same forward as the last <|/branch|> tokens
                ids.append(c.para_end)
                pos += self.planner.take_main(1)
                grp.append(MAIN)
                br.append(MAIN)
            logits = yield from self.step(ids, pos, grp, br)
            if not closing:
                still = [b for b in live if not branches[b].done]
                if len(still) < len(live):  # most steps every branch goes on: no gather of the logits
                    logits = logits[[i for i, b in enumerate(live) if not branches[b].done]]
                yield from self.sample_branches(g, branches, still, logits)
                continue
            if not fuse:
                self.rearrange(g, branches, re_starts)
                logits = yield from self.step([c.para_end], self.planner.take_main(1), [MAIN], [MAIN])
            break
        self.main_hist.append(c.para_end)
        self.out.close()
        self.emit(Event("close", MAIN_STREAM, titles=tuple(titles)))
        self.stats.parallel_seconds += time.perf_counter() - tp
        return logits[-1:]

    def sample_branches(self, g: int, branches: list[_Branch], which: list[int],
                        logits: torch.Tensor) -> Generator[Draw, list[int], None]:
        e, c, lim = self.e, self.e.ctrl, self.lim
        xs = [branches[b] for b in which]
        # Every live branch still owes one end token, so only budget_left - len(which) of them may go on.
        go_on = lim.max_new_tokens - self.stats.tokens - len(which)
        cap = lim.max_branch_tokens
        if go_on >= len(xs) and all(len(x.ids) + 1 < cap for x in xs):  # most steps: every branch may go on
            bans = [e._ban_branch] * len(xs)
        else:
            bans = []
            for k, x in enumerate(xs):
                capped = len(x.ids) + 1 >= cap  # its cap forces the branch to end now
                bans.append(e._only_branch_end if capped or k >= go_on else e._ban_branch)
                self.cut |= k >= go_on and not capped  # ended by the budget: the answer was cut
        hists = [_BranchHistory(self.main_hist, x.ids) for x in xs]
        toks = yield from self.draw(logits, [(g, b) for b in which], bans, hists)
        self.stats.tokens += len(toks)
        self.stats.parallel_tokens += len(toks)
        for b, x, tok in zip(which, xs, toks, strict=True):
            if tok in e.eot:  # a branch cannot end the answer; it just ends itself
                tok = c.branch_end
            x.pending = tok
            self.out.branch(b, tok)
            self.emit_token((g, b), tok)

    def rearrange(self, g: int, branches: list[_Branch], starts: list[int]) -> None:
        """same-re: lay the closed group end to end by re-rotating its cached keys to the new positions."""
        kv = self.kv
        pos, grp, br = kv.pos, kv.grp, kv.br
        sel = grp == g
        new_pos = pos.clone()
        for b, s in enumerate(starts):
            m = sel & (br == b)
            new_pos[m] = pos[m] - branches[b].start + s
        kv.reposition(sel.nonzero().flatten(), new_pos[sel])
