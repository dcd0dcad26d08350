"""Drop training prompts that overlap a benchmark question, exactly or nearly.

Bench items: every turn of every question in the bench files (MT-Bench's second turns too). A RAG turn
("context: ... question: ...") gives two items, its question and its context: the question alone is short, so a
prompt asking it is caught by the Jaccard rule, which a 5,000-character turn would hide; the context is a
passage the RAG bench is answered from, and a training prompt that quotes it (say, an extraction task over the
same article) would teach the model that passage.

A prompt (with its context, if any) hits a bench item B when, over character 5-gram shingle sets,
  jaccard:          |P & B| / |P | B| >= 0.6
  bench_in_prompt:  |P & B| / |B|     >= 0.9   (the bench item is copied inside a longer prompt)
  prompt_in_bench:  |P & B| / |P|     >= 0.9   (the prompt is a piece of a bench item; prompts of >= 50 shingles)
The first two are the rule the shared prompt file was cleaned with; the third is what makes the RAG contexts
count, since no prompt contains most of a long passage.

Exact and fast: a pigeonhole prefix filter finds every candidate pair. If |P & B| >= c|B|, P must contain one
of any |B| - ceil(c|B|) + 1 shingles of B, so only those (the rarest) are indexed; likewise for |P & B| >= c|P|
with the rarest shingles of P. Candidates are then scored on the full sets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aspd.bench.data import BENCHES, BenchDataError, load_questions
from aspd.prompts.text import overlap, shingles


@dataclass(frozen=True)
class BenchItem:
    id: str  # e.g. "mt_bench:81:turn2", "rag_bench:7:context"
    text: str


@dataclass(frozen=True)
class Rules:
    jaccard: float = 0.6
    contained: float = 0.9  # both containment directions
    min_prompt_shingles: int = 50  # prompt_in_bench only applies from this prompt size on

    def __post_init__(self) -> None:
        for name in ("jaccard", "contained"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} threshold must be in (0, 1], got {getattr(self, name)}")
        if self.min_prompt_shingles < 1:
            raise ValueError("min_prompt_shingles must be at least 1")


@dataclass(frozen=True)
class Hit:
    index: int  # prompt position
    bench_id: str
    rule: str
    score: float
    jaccard: float
    bench_in_prompt: float
    prompt_in_bench: float


def split_rag(turn: str) -> tuple[str, str] | None:
    """(question, context) of a turn shaped "context:\\n...\\nquestion:...", else None."""
    head = turn.lstrip()
    cut = turn.rfind("question:")
    if not head.lower().startswith("context:") or cut < 0:
        return None
    context = turn[: cut].strip()
    context = context[len("context:") :].strip() if context.lower().startswith("context:") else context
    return turn[cut + len("question:") :].strip(), context.removesuffix("###").strip()


def load_bench_items(bench_dir: str | Path, extra_files: Sequence[str | Path] = ()) -> dict[str, list[BenchItem]]:
    """Items per bench file: the three standard files of the directory (all required) and any extra files."""
    d = Path(bench_dir)
    files = [d / name for name in BENCHES.values()] + [Path(p) for p in extra_files]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise BenchDataError(f"bench file(s) not found: {', '.join(missing)}")
    out: dict[str, list[BenchItem]] = {}
    for path in files:
        stem = path.name.removesuffix(".jsonl")
        items = out.setdefault(str(path), [])
        for q in load_questions(path):
            for t, turn in enumerate(q.turns, 1):
                base = f"{stem}:{q.id}" + (f":turn{t}" if len(q.turns) > 1 else "")
                rag = split_rag(turn)
                if rag is None:
                    items.append(BenchItem(base, turn))
                else:
                    items += [BenchItem(f"{base}:question", rag[0]), BenchItem(f"{base}:context", rag[1])]
    return out


def _prefix_size(size: int, c: float) -> int:
    """How many shingles of a set of `size` must include one shared with any set covering >= c of it."""
    return size - math.ceil(c * size - 1e-9) + 1


def find_hits(prompts: Sequence[str], items: Sequence[BenchItem], rules: Rules = Rules()) -> list[Hit]:
    """Every (prompt, bench item) pair that meets a rule, strongest rule's score first per pair."""
    p_sets = [shingles(t) for t in prompts]
    b_sets = [shingles(it.text) for it in items]
    vocab, counts = np.unique(np.concatenate([*p_sets, *b_sets, np.zeros(0, np.uint64)]), return_counts=True)

    def rarest(s: np.ndarray, k: int) -> np.ndarray:
        freq = counts[np.searchsorted(vocab, s)]
        return s[np.argsort(freq, kind="stable")[:k]]

    # B-side prefixes: jaccard >= t implies |P & B| >= t|B|; bench_in_prompt needs |P & B| >= c|B|.
    c_b = min(rules.jaccard, rules.contained)
    b_index: dict[int, list[int]] = {}
    full_index: dict[int, list[int]] = {}
    for j, s in enumerate(b_sets):
        for h in rarest(s, _prefix_size(s.size, c_b)).tolist():
            b_index.setdefault(h, []).append(j)
        for h in s.tolist():
            full_index.setdefault(h, []).append(j)
    b_keys = np.sort(np.fromiter(b_index, dtype=np.uint64, count=len(b_index)))
    b_sizes = np.array([s.size for s in b_sets])
    hits = []
    for i, p in enumerate(p_sets):
        if p.size == 0 or b_keys.size == 0:
            continue
        at = np.minimum(np.searchsorted(b_keys, p), b_keys.size - 1)
        cand = {j for h in p[b_keys[at] == p].tolist() for j in b_index[h] if p.size >= c_b * b_sizes[j]}
        if p.size >= rules.min_prompt_shingles:  # P-side prefix for prompt_in_bench: |P & B| >= c|P|
            cand |= {j for h in rarest(p, _prefix_size(p.size, rules.contained)).tolist()
                     for j in full_index.get(h, ())}
        for j in sorted(cand):
            b = b_sets[j]
            inter = overlap(p, b)
            jac = inter / (p.size + b.size - inter)
            b_in_p, p_in_b = inter / b.size, inter / p.size
            met = [("jaccard", jac) if jac >= rules.jaccard else None,
                   ("bench_in_prompt", b_in_p) if b_in_p >= rules.contained else None,
                   ("prompt_in_bench", p_in_b) if p_in_b >= rules.contained and p.size >= rules.min_prompt_shingles
                   else None]
            found = [m for m in met if m]
            if found:
                rule, score = max(found, key=lambda m: m[1])
                hits.append(Hit(i, items[j].id, rule, round(score, 4), round(jac, 4), round(b_in_p, 4),
                                round(p_in_b, 4)))
    return hits
