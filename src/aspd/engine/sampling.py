"""Per-stream sampling: temperature, top-k, top-p, repetition penalty, each stream with its own generator."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from aspd.layout import MAIN


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy (exact argmax). The paper samples with 0.7 / top-k 20 / top-p 0.8."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


PAPER_SAMPLING = SamplingParams(temperature=0.7, top_k=20, top_p=0.8)


def stream_generator(seed: int, stream: tuple[int, int], device: torch.device) -> torch.Generator:
    """A generator per stream: main is (-1, -1), branch b of group g is (g, b). Same seed, same draws."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + (stream[0] + 1) * 10_007 + (stream[1] + 1)) % (2**63))
    return g


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """The CTRL-style penalty HF uses: divide positive, multiply negative logits of tokens seen ([N, V] bool)."""
    if penalty == 1.0:
        return logits
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


@dataclass
class Pending:
    """One decoder's draw, ready to sample: logits [n, V], and what each row's history and rules made of them."""

    logits: torch.Tensor
    params: SamplingParams
    generators: Sequence[torch.Generator] | torch.Generator | None = None
    seen: torch.Tensor | None = None  # [n, V] bool: each row's history (repetition penalty)
    banned: torch.Tensor | None = None  # [n, V] bool: tokens the stream may not emit


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    generators: Sequence[torch.Generator] | torch.Generator | None = None,
    seen: torch.Tensor | None = None,
    banned: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next token per row of logits [N, V]. `seen` [N, V] bool marks each row's history (repetition penalty);
    `banned` [N, V] bool masks tokens the stream may not emit. `generators`: one per row, or one for all rows."""
    return sample_many([Pending(logits, params, generators, seen, banned)])[0]


def sample_many(draws: Sequence[Pending]) -> list[torch.Tensor]:
    """The next tokens of many draws (a batch's requests): draws that sample alike (greedy, or the same
    temperature, top-k and top-p; and the same repetition penalty) go through one set of kernels, and only the
    random pick runs per draw, with its own generators. Every step is row by row, so a draw gets the tokens it
    gets sampled alone."""
    out: list[torch.Tensor | None] = [None] * len(draws)
    alike: dict[tuple[float, int, float, float], list[int]] = {}
    for i, d in enumerate(draws):
        p = d.params
        how = (0.0, 0, 1.0) if p.greedy else (p.temperature, p.top_k, p.top_p)
        alike.setdefault((*how, p.repetition_penalty if d.seen is not None else 1.0), []).append(i)
    for (temperature, top_k, top_p, penalty), idx in alike.items():
        group = [draws[i] for i in idx]
        spans = _offsets(group)
        logits = _cat([d.logits for d in group]).float()
        if penalty != 1.0:  # every draw of the group has its history
            logits = apply_repetition_penalty(logits, _cat([d.seen for d in group]), penalty)  # type: ignore[misc]
        if any(d.banned is not None for d in group):
            logits = logits.masked_fill(_cat([d.banned if d.banned is not None else torch.zeros(
                len(d.logits), logits.shape[-1], dtype=torch.bool, device=logits.device) for d in group]),
                float("-inf"))
        if temperature == 0:
            picks = logits.argmax(-1)
        else:
            picks = _sample_rows(logits, temperature, top_k, top_p, spans)
        for (at, d), i in zip(spans, idx, strict=True):
            out[i] = picks[at : at + len(d.logits)]
    return out  # type: ignore[return-value]


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _offsets(group: Sequence[Pending]) -> list[tuple[int, Pending]]:
    at, out = 0, []
    for d in group:
        out.append((at, d))
        at += len(d.logits)
    return out


def _sample_rows(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                 spans: Sequence[tuple[int, Pending]]) -> torch.Tensor:
    logits = logits / temperature
    # Work on the candidates only: the top-k (sorted), or the whole vocabulary sorted when top-p alone is set.
    if top_k > 0:
        logits, order = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1)
    elif top_p < 1.0:
        logits, order = torch.sort(logits, descending=True, dim=-1)
    else:
        order = None
    if top_p < 1.0:
        probs = logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    picks = []
    for at, d in spans:  # the random draw per decoder: its generators, its rows
        rows, gens = probs[at : at + len(d.logits)], d.generators
        if gens is None or isinstance(gens, torch.Generator):
            picks.append(_race(rows, gens))
        else:
            picks.append(torch.cat([_race(rows[i : i + 1], gens[i]) for i in range(len(rows))]))
    pick = _cat(picks)
    return (pick if order is None else order.gather(-1, pick)).squeeze(-1)


def _race(probs: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """One draw per row from `probs` [n, K]: the argmax of p / E with E ~ Exp(1) per entry picks entry i with
    probability p_i (the exponential race; gpt-fast samples so too). On an H200 `torch.multinomial` keeps the host
    ~100 us a call, this ~24 us (`benchmarks/results/sampling_gpu/`). E is kept above zero so that a zero
    probability never becomes 0/0."""
    e = torch.empty_like(probs).exponential_(generator=gen).clamp_(min=torch.finfo(probs.dtype).tiny)
    return (probs / e).argmax(-1, keepdim=True)


Stream = tuple[int, int]  # (MAIN, MAIN) or (group, branch)
MAIN_STREAM: Stream = (MAIN, MAIN)


class StreamSampler:
    """The eager engine's sampler: a generator per stream, histories read afresh at every step.

    A stream's draws depend only on the seed and its own logits, whatever its siblings do.
    """

    def __init__(self, params: SamplingParams, vocab: int, device: torch.device):
        self.sp, self.vocab, self.device = params, vocab, device
        self.gens: dict[Stream, torch.Generator] = {}

    def prepare(self, logits: torch.Tensor, streams: Sequence[Stream], banned: torch.Tensor | None,
                hists: Sequence[Sequence[int]]) -> Pending:
        gens = None
        if not self.sp.greedy:
            gens = [self.gens.setdefault(s, stream_generator(self.sp.seed, s, self.device)) for s in streams]
        seen = None
        if self.sp.repetition_penalty != 1.0:
            seen = torch.zeros(len(hists), self.vocab, dtype=torch.bool, device=self.device)
            for row, h in enumerate(hists):
                seen[row, torch.tensor(list(h), dtype=torch.long, device=self.device)] = True
        return Pending(logits, self.sp, gens, seen, banned)


class BatchSampler:
    """The fast engine's sampler: one generator and one batched draw for all streams, histories kept on the device.

    Each stream owns a row of a [streams, V] "seen" table that only the tokens new since its last draw update,
    so a step uploads a handful of ids instead of every history. A stream met for the first time starts from the
    main stream's row: its history must extend the main stream's, as a branch's does. Reading the drawn tokens
    (the driver's `.tolist()`) is the one host sync the engine's control flow needs.
    """

    def __init__(self, params: SamplingParams, vocab: int, device: torch.device):
        self.sp, self.vocab, self.device, self.main = params, vocab, device, MAIN_STREAM
        self.gen: torch.Generator | None = None
        if not params.greedy:
            self.gen = torch.Generator(device=device)
            self.gen.manual_seed(params.seed)
        self.penalize = params.repetition_penalty != 1.0
        self.seen = torch.zeros(0, vocab, dtype=torch.bool, device=device)
        self.rows: dict[Stream, tuple[int, int]] = {}  # stream -> (row, history tokens applied)

    def _row(self, stream: Stream) -> tuple[int, int]:
        if stream in self.rows:
            return self.rows[stream]
        if stream != self.main:  # a new group's branches reuse the rows of the previous group's
            group = stream[0]
            for s in [s for s in self.rows if s != self.main and s[0] != group]:
                del self.rows[s]
        used = {r for r, _ in self.rows.values()}
        row = next(r for r in range(len(used) + 1) if r not in used)
        if row >= self.seen.shape[0]:
            grow = torch.zeros(row + 1 - self.seen.shape[0], self.vocab, dtype=torch.bool, device=self.device)
            self.seen = torch.cat([self.seen, grow])
        applied = 0
        if stream != self.main and self.main in self.rows:
            main_row, applied = self.rows[self.main]
            self.seen[row] = self.seen[main_row]
        else:
            self.seen[row] = False
        return row, applied

    def fork(self, child: Stream, parent: Stream) -> None:
        """A PASTA fork's history extends its parent's, not the main stream's: start from the parent's row."""
        if not self.penalize or parent not in self.rows:
            return
        prow, applied = self.rows[parent]
        row, _ = self._row(child)
        self.seen[row] = self.seen[prow]
        self.rows[child] = (row, applied)

    def prepare(self, logits: torch.Tensor, streams: Sequence[Stream], banned: torch.Tensor | None,
                hists: Sequence[Sequence[int]]) -> Pending:
        """One draw of a token per stream, for the driver to sample (`sample_many`, beside other requests' draws)
        and read (the step's host sync)."""
        seen = None
        if self.penalize:
            rows, new_r, new_c = [], [], []
            for s, h in zip(streams, hists, strict=True):
                row, applied = self._row(s)
                rows.append(row)
                new_r += [row] * (len(h) - applied)
                new_c += list(h[applied:])
                self.rows[s] = (row, len(h))
            upd = torch.tensor([new_r + rows, new_c + [0] * len(rows)], dtype=torch.long)
            if self.device.type == "cuda":
                upd = upd.pin_memory()  # an asynchronous upload: no sync before the draw
            upd = upd.to(self.device, non_blocking=True)
            self.seen[upd[0, : len(new_r)], upd[1, : len(new_r)]] = True
            seen = self.seen[upd[0, len(new_r) :]]
        return Pending(logits, self.sp, self.gen, seen, banned)
