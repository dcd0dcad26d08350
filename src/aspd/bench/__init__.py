"""Benchmarks: speed (TPS, P-TPS, DP, ABN, PPD, latency, speedup vs baselines) and judge-free NLL.

Question sets are MT-Bench-style JSONL (`aspd.bench.data`); `aspd.bench.speed` runs the models interleaved;
`aspd.bench.metrics` defines and computes the aggregates; `aspd.bench.nll` scores answers under a reference
model; `aspd.bench.report` writes results.json / results.md; `aspd.bench.quality` grades answers with an LLM
judge (MT-Bench single-answer) and `aspd.bench.exact` checks final numbers (GSM8K). The CLI is
`aspd bench speed|nll|quality|exact`.
"""
