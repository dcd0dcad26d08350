"""Benchmarks: speed (TPS, P-TPS, DP, ABN, PPD, latency, speedup vs baselines) and judge-free NLL.

Question sets are MT-Bench-style JSONL (`aspd.bench.data`); `aspd.bench.speed` runs the models interleaved;
`aspd.bench.metrics` defines and computes the aggregates; `aspd.bench.nll` scores answers under a reference
model; `aspd.bench.report` writes results.json / results.md; `aspd.bench.quality` grades answers with an LLM
judge (MT-Bench single-answer) and `aspd.bench.exact` checks final numbers (GSM8K). The CLI is
`aspd bench speed|nll|quality|exact`.
"""

from aspd.bench.data import BenchDataError, Question, load_questions, parse_questions, resolve_bench
from aspd.bench.metrics import aggregate, speedup, summarize
from aspd.bench.nll import answer_nll, nll_summary, score_rows
from aspd.bench.speed import ModelSpec, load_engines, parse_spec, parse_specs, run_speed

__all__ = [
    "BenchDataError", "ModelSpec", "Question", "aggregate", "answer_nll", "load_engines", "load_questions",
    "nll_summary", "parse_questions", "parse_spec", "parse_specs", "resolve_bench", "run_speed", "score_rows",
    "speedup", "summarize",
]
