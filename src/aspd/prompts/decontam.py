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

Exact: an inverted index from shingle to the bench items holding it gives, for a chunk of prompts at a time,
every intersection size |P & B| in one count (numpy), from which all three scores follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aspd.bench.data import BENCHES, BenchDataError, load_questions
from aspd.prompts.text import shingle_sets


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


def _ragged_arange(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated ranges starts[i] .. starts[i] + lens[i] - 1."""
    offsets = np.cumsum(lens) - lens
    return np.repeat(starts - offsets, lens) + np.arange(int(lens.sum()))


def find_hits(prompts: Sequence[str], items: Sequence[BenchItem], rules: Rules = Rules(), chunk: int = 256) -> list[Hit]:
    """Every (prompt, bench item) pair that meets a rule, with the rule whose score is highest."""
    b_sets = shingle_sets([it.text for it in items])
    b_sizes = np.array([s.size for s in b_sets], dtype=np.int64)
    # inverted index: sorted shingle keys, and for each the bench items holding it (CSR layout)
    flat = np.concatenate([*b_sets, np.zeros(0, np.uint64)])
    owner = np.repeat(np.arange(len(b_sets)), b_sizes)
    order = np.argsort(flat, kind="stable")
    keys, first = np.unique(flat[order], return_index=True)
    ptr, owners = np.append(first, flat.size), owner[order]
    hits: list[Hit] = []
    if keys.size == 0:
        return hits
    for lo in range(0, len(prompts), chunk):
        p_sets = shingle_sets(prompts[lo : lo + chunk])
        p_sizes = np.array([s.size for s in p_sets], dtype=np.int64)
        sh = np.concatenate([*p_sets, np.zeros(0, np.uint64)])
        pid = np.repeat(np.arange(len(p_sets)), p_sizes)
        at = np.minimum(np.searchsorted(keys, sh), keys.size - 1)
        found = keys[at] == sh
        at, pid = at[found], pid[found]
        lens = ptr[at + 1] - ptr[at]
        pairs = np.repeat(pid, lens) * len(items) + owners[_ragged_arange(ptr[at], lens)]
        inter = np.bincount(pairs, minlength=len(p_sets) * len(items)).reshape(len(p_sets), len(items))
        ps, bs = p_sizes[:, None], b_sizes[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = {"jaccard": inter / (ps + bs - inter), "bench_in_prompt": inter / bs,
                      "prompt_in_bench": np.where(ps >= rules.min_prompt_shingles, inter / ps, 0.0)}
        limits = {"jaccard": rules.jaccard, "bench_in_prompt": rules.contained, "prompt_in_bench": rules.contained}
        met = {k: np.nan_to_num(v) >= limits[k] for k, v in scores.items()}
        for i, j in zip(*np.nonzero(met["jaccard"] | met["bench_in_prompt"] | met["prompt_in_bench"]), strict=True):
            rule = max((k for k in met if met[k][i, j]), key=lambda k: scores[k][i, j])
            hits.append(Hit(lo + int(i), items[j].id, rule, round(float(scores[rule][i, j]), 4),
                            *(round(float(np.nan_to_num(scores[k][i, j])), 4)
                              for k in ("jaccard", "bench_in_prompt", "prompt_in_bench"))))
    return hits
