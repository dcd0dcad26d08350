"""The parallel-structure metrics (DESIGN.md section 6): of one document (`parallel_stats`, `dp`) or of a set
(`abn`, `ppd`); and the aggregates of per-answer bench rows. The rows' definitions, per model label:

- TPS: visible answer tokens (re-tokenized, control tokens excluded) / wall-clock seconds of the generation;
  reported as the median over answers, with p25 / p75.
- P-TPS: tokens sampled inside branches / seconds spent in parallel stages; median over the answers that
  opened at least one group (None when none did).
- DP: parallel tokens / all sampled tokens, per answer; reported as the mean over answers (0 for serial ones).
- ABN: branches per group, pooled over every group of every answer (total branches / total groups).
- PPD: share of answers with at least one group.
- latency (WCL): wall-clock seconds per answer; median, p25, p75.
- speedup vs a baseline, two readings:
  * `speedup_median` (the headline): for each question (and turn) both answered, the ratio
    model TPS / baseline TPS = (baseline seconds per visible token) / (model seconds per visible token);
    the median of these per-question ratios, with p25 / p75 as spread.
  * `ratio_of_medians`: median model TPS / median baseline TPS over the same paired questions.
  * `latency_ratio_median`: median over the same pairs of baseline seconds / model seconds (whole-answer
    wall clock, not normalized by length: it also moves when the answers differ in length).
  Pairs where either answer has no visible token are left out (the ratio is undefined).
- NLL (when scored): `nll_mean` = total NLL / total scored tokens (token-weighted mean per-token NLL);
  `nll_median` = median over answers of each answer's mean per-token NLL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aspd.markup import Document, Serial

Row = dict[str, Any]


# ---------------------------------------------------------------------------------------------------------
# Documents



def word_count(text: str) -> int:
    """Default token counter: whitespace-separated words."""
    return len(text.split())


@dataclass(frozen=True)
class ParallelStats:
    """Token and structure counts of one document (see `parallel_stats`)."""

    serial_tokens: int
    parallel_tokens: int
    groups: int
    branches: int

    @property
    def total_tokens(self) -> int:
        return self.serial_tokens + self.parallel_tokens


def parallel_stats(doc: Document, count: Callable[[str], int] = word_count) -> ParallelStats:
    """Token counts of the normalised doc, each text counted on its own (as the model tokenizes per segment).

    Parallel tokens are branch bodies only. Titles count as serial: the main stream writes them. Control
    tokens and the engine-inserted branch prefixes are not counted.
    """
    serial = parallel = groups = branches = 0
    for seg in doc.normalized().segments:
        if isinstance(seg, Serial):
            serial += count(seg.text)
        else:
            groups += 1
            branches += len(seg.branches)
            serial += sum(count(b.title) for b in seg.branches)
            parallel += sum(count(b.text) for b in seg.branches)
    return ParallelStats(serial, parallel, groups, branches)


def dp(doc: Document, count: Callable[[str], int] = word_count) -> float:
    """Degree of parallelism: parallel tokens / all tokens (0.0 for an empty document)."""
    stats = parallel_stats(doc, count)
    return stats.parallel_tokens / stats.total_tokens if stats.total_tokens else 0.0


def abn(docs: Iterable[Document]) -> float:
    """Average branch number: mean branches per group over all groups of all docs (0.0 if no group)."""
    groups = [g for d in docs for g in d.groups]
    return sum(len(g.branches) for g in groups) / len(groups) if groups else 0.0


def ppd(docs: Iterable[Document]) -> float:
    """Share of docs with at least one group (0.0 for no docs)."""
    flags = [bool(d.groups) for d in docs]
    return sum(flags) / len(flags) if flags else 0.0


# ---------------------------------------------------------------------------------------------------------
# Bench rows


def quantile(xs: Iterable[float], q: float) -> float | None:
    """Linear-interpolated quantile (numpy's default); None for no data."""
    v = list(xs)
    return float(np.quantile(v, q)) if v else None


def median(xs: Iterable[float]) -> float | None:
    return quantile(xs, 0.5)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize(rows: Sequence[Row]) -> dict[str, Any]:
    """The numbers of one model (optionally one category) over its answers."""
    tps = [r["tps"] for r in rows]
    lat = [r["seconds"] for r in rows]
    par = [r for r in rows if r["groups"] > 0]
    groups = sum(r["groups"] for r in rows)
    out: dict[str, Any] = {
        "answers": len(rows),
        "tokens": sum(r["tokens"] for r in rows),
        "visible_tokens": sum(r["visible_tokens"] for r in rows),
        "parallel_tokens": sum(r["parallel_tokens"] for r in rows),
        "seconds": sum(lat),
        "tps_median": median(tps), "tps_p25": quantile(tps, 0.25), "tps_p75": quantile(tps, 0.75),
        "parallel_tps_median": median(r["parallel_tps"] for r in par),
        "dp_mean": _mean([r["dp"] for r in rows]),
        "abn": sum(sum(r["branches"]) for r in rows) / groups if groups else None,
        "ppd": len(par) / len(rows) if rows else None,
        "groups": groups,
        "latency_median": median(lat), "latency_p25": quantile(lat, 0.25), "latency_p75": quantile(lat, 0.75),
        "truncated": sum(r["finish_reason"] == "length" for r in rows),  # answers cut by max-new-tokens
    }
    scored = [r for r in rows if r.get("nll_tokens")]
    if scored:
        n = sum(r["nll_tokens"] for r in scored)
        out.update(nll_mean=sum(r["nll_sum"] for r in scored) / n,
                   nll_median=median(r["nll_sum"] / r["nll_tokens"] for r in scored), nll_tokens=n,
                   nll_answers=len(scored))
    return out


def speedup(rows: Sequence[Row], model: str, baseline: str) -> dict[str, Any]:
    """Per-question TPS ratios of `model` over `baseline` (labels), paired on (question id, turn)."""
    base = {(r["id"], r["turn"]): r for r in rows if r["label"] == baseline}
    pairs = [(r, base[(r["id"], r["turn"])]) for r in rows
             if r["label"] == model and (r["id"], r["turn"]) in base]
    pairs = [(m, b) for m, b in pairs if m["tps"] > 0 and b["tps"] > 0]
    ratios = [m["tps"] / b["tps"] for m, b in pairs]
    mm, bm = median(m["tps"] for m, _ in pairs), median(b["tps"] for _, b in pairs)
    return {
        "model": model, "baseline": baseline, "pairs": len(pairs),
        "speedup_median": median(ratios), "speedup_p25": quantile(ratios, 0.25),
        "speedup_p75": quantile(ratios, 0.75),
        "ratio_of_medians": mm / bm if mm is not None and bm else None,
        "latency_ratio_median": median(b["seconds"] / m["seconds"] for m, b in pairs),
    }


def aggregate(rows: Sequence[Row], labels: Sequence[str], models: Sequence[str],
              baselines: Sequence[str]) -> dict[str, Any]:
    """{overall: {label: summary}, by_category: {cat: {label: summary}}, speedups: [...]}.

    Each speedup entry carries `category` ("all" or one category). `labels` fixes the report order.
    """
    cats = list(dict.fromkeys(r["category"] for r in rows))
    overall = {lab: summarize([r for r in rows if r["label"] == lab]) for lab in labels}
    by_cat = {c: {lab: summarize([r for r in rows if r["label"] == lab and r["category"] == c]) for lab in labels}
              for c in cats}
    speedups = []
    for c in ["all", *cats]:
        sub = rows if c == "all" else [r for r in rows if r["category"] == c]
        for m in models:
            for b in baselines:
                speedups.append({"category": c, **speedup(sub, m, b)})
    return {"overall": overall, "by_category": by_cat, "speedups": speedups}
