"""`aspd bench speed` and `aspd bench nll`.

    aspd bench speed --model aspd-smollm2-135m --baseline seq-smollm2-135m \
        --baseline aspd-smollm2-135m:serial --bench vicuna --limit 20 --out runs/bench/vicuna
    aspd bench nll --answers runs/bench/vicuna/results.json --model smollm2-135m

Progress goes to stderr; the summary table to stdout; results.json + results.md to --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aspd.cli import CLIError
from aspd.engine.cli import add_limit_args, add_sampling_args, limits_from_args, sampling_from_args

DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
REFERENCE_MODEL = "smollm2-135m"  # the original model the ASPD SmolLM2 fine-tune starts from


def _add_device(p: argparse.ArgumentParser, dtype_default: str = "auto") -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", default=dtype_default, choices=DTYPES,
                   help=f"default: {dtype_default}" + (" (bf16 on a capable GPU, else fp32)" if dtype_default == "auto"
                                                        else ""))


def register(sub: Any) -> None:
    """Add `bench` (with `speed` and `nll`) to the top-level `aspd` parser."""
    from aspd.engine.cli import _one_line_error

    bench = sub.add_parser("bench", help="speed (TPS, DP, speedup) and NLL benchmarks",
                           description="Benchmarks on MT-Bench-style question sets.")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")

    p = bsub.add_parser(
        "speed", help="answer a question set with several models, interleaved, and compare speed",
        description="Every model answers every question in one process on one device: one warm-up each, then "
                    "questions interleaved with the model order rotating per question, the same sampling and "
                    "seed for all. Reports TPS, P-TPS, DP, ABN, PPD, latency and speedups against baselines.")
    p.add_argument("--model", action="append", required=True, metavar="SPEC",
                   help="model under test, NAME_OR_PATH[:hybrid|serial] (default mode hybrid); repeatable")
    p.add_argument("--baseline", action="append", default=[], metavar="SPEC",
                   help="baseline, NAME_OR_PATH[:hybrid|serial] (default mode serial); repeatable")
    p.add_argument("--bench", required=True, metavar="vicuna|mt|rag|FILE",
                   help="question set: a name from the bench directory or any JSONL of the same shape")
    p.add_argument("--bench-dir", default=None, metavar="DIR",
                   help="where vicuna/mt/rag live (default: $ASPD_BENCH_DIR, else shared/data/bench found "
                        "from the current directory upwards)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N questions only")
    p.add_argument("--category", action="append", default=[], help="only this category; repeatable")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory for results.json and results.md (default: runs/bench/<bench>-<time>)")
    _add_device(p)
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"), help="attention backend (default sdpa)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="warm-up generations per model (default 1)")
    p.add_argument("--nll-model", default=None, metavar="NAME",
                   help="also score every answer's per-token NLL under this reference model (e.g. the original)")
    add_sampling_args(p, "sampling (default: greedy; the same for every model)",
                      "base seed; question i uses seed + i for every model (default 0)")
    add_limit_args(p)
    p.add_argument("--answer-prefix", default=None, metavar="TEXT",
                   help="advanced, for demos/tests: force the start of every hybrid answer (control tokens "
                        "written literally); the report flags it")
    p.set_defaults(func=_cmd_speed)
    _one_line_error(p)

    p = bsub.add_parser(
        "nll", help="per-token NLL of benchmark answers under a reference model",
        description="Score each answer's visible (flattened) text under a reference model given the same chat "
                    "prompt; report the mean and median per-token NLL per model label.")
    p.add_argument("--answers", required=True, metavar="FILE", help="results.json written by `aspd bench speed`")
    p.add_argument("--model", default=REFERENCE_MODEL,
                   help=f"reference model, registry name or folder (default: {REFERENCE_MODEL})")
    p.add_argument("--out", default=None, metavar="FILE", help="NLL JSON (default: nll.json beside --answers)")
    p.add_argument("--update", action="store_true",
                   help="also write the NLL into --answers and re-render results.md beside it")
    _add_device(p, "float32")
    p.set_defaults(func=_cmd_nll)
    _one_line_error(p)


def _err(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _device(name: str | None) -> str:
    import torch

    from aspd.loading import default_device

    if name is None:
        return default_device()
    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        raise CLIError(f"unknown device {name!r}") from None
    return name


def _progress(total: int) -> Any:
    def show(r: dict[str, Any]) -> None:
        print(f"[{r['run_index'] + 1}/{total}] q{r['id']} t{r['turn']} {r['label']}: {r['visible_tokens']} tok, "
              f"{r['seconds']:.2f} s, {r['tps']:.1f} tok/s, {r['groups']} groups", file=sys.stderr, flush=True)

    return show


def _cmd_speed(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from aspd.bench.data import BenchDataError, load_questions, resolve_bench
    from aspd.bench.metrics import aggregate
    from aspd.bench.report import command_line, machine_info, overview, write_results
    from aspd.bench.speed import load_engines, parse_specs, run_speed

    # Every check before the slow loads, so mistakes fail at once.
    try:
        specs = parse_specs(args.model, args.baseline)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1, not {args.limit}")
    if args.warmup < 0:
        raise CLIError(f"--warmup must be >= 0, not {args.warmup}")
    try:
        bench_file = resolve_bench(args.bench, args.bench_dir)
        questions = load_questions(bench_file, limit=args.limit, categories=args.category)
    except BenchDataError as e:
        raise CLIError(str(e)) from None
    sampling, limits = sampling_from_args(args), limits_from_args(args)
    device = _device(args.device)
    bench_name = args.bench if args.bench in ("vicuna", "mt", "rag") else bench_file.stem
    out = Path(args.out or f"runs/bench/{bench_name}-{dt.datetime.now():%Y%m%d-%H%M%S}")

    hf_logging.set_verbosity_error()
    try:
        engines = load_engines(specs, device=device, dtype=args.dtype, attn=args.attn)
    except Exception as e:  # one line for the user; the library raises as usual
        raise CLIError(f"cannot load a model: {_err(e)}") from None
    for s in specs:
        if s.mode == "hybrid" and not engines[s.name].is_aspd_model:
            print(f"aspd: note: {s.name} is not an ASPD model (no control tokens); it will answer serially",
                  file=sys.stderr)
    total = sum(len(q.turns) for q in questions) * len(specs)
    machine = machine_info(device)
    try:
        rows, warm = run_speed(engines, specs, questions, sampling=sampling, limits=limits, warmup=args.warmup,
                               answer_prefix=args.answer_prefix, on_row=_progress(total))
    except ValueError as e:  # e.g. a prompt longer than the model's context
        raise CLIError(_err(e)) from None
    if hasattr(os, "getloadavg"):
        machine["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    if args.nll_model:
        _score(rows, args.nll_model, device, "float32")
    labels = [s.label for s in specs]
    results = {
        "config": {
            "command": command_line(getattr(args, "argv", None)), "bench": bench_name, "bench_file": str(bench_file),
            "questions": len(questions), "limit": args.limit, "categories": args.category,
            "models": [{**asdict(s), "is_aspd_model": engines[s.name].is_aspd_model,
                        "mask_mode": engines[s.name].mask_mode.value, "pos_mode": engines[s.name].pos_mode.value}
                       for s in specs],
            "device": device, "dtype": args.dtype, "attn": args.attn, "sampling": asdict(sampling),
            "seed_rule": "question i uses sampling.seed + i", "limits": asdict(limits), "warmup": args.warmup,
            "nll_model": args.nll_model, "answer_prefix": args.answer_prefix,
        },
        "machine": machine,
        "warmup": warm,
        "aggregates": aggregate(rows, labels, [s.label for s in specs if s.role == "model"],
                                [s.label for s in specs if s.role == "baseline"]),
        "rows": rows,
    }
    js, md = write_results(out, results)
    print(overview(results))
    print(f"aspd: wrote {js} and {md}", file=sys.stderr)
    return 0


def _score(rows: list[dict[str, Any]], model: str, device: str, dtype: str) -> None:
    from aspd.bench.nll import load_reference, score_rows

    try:
        ref, tok = load_reference(model, device=device, dtype=dtype)
    except Exception as e:
        raise CLIError(f"cannot load reference model {model!r}: {_err(e)}") from None
    n = len(rows)

    def show(r: dict[str, Any]) -> None:
        nll = "–" if r["nll"] is None else f"{r['nll']:.3f}"
        print(f"[nll {rows.index(r) + 1}/{n}] q{r['id']} t{r['turn']} {r['label']}: {nll}", file=sys.stderr,
              flush=True)

    score_rows(rows, ref, tok, on_row=show)


def _cmd_nll(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from aspd.bench.metrics import aggregate
    from aspd.bench.nll import nll_summary
    from aspd.bench.report import command_line, machine_info, markdown

    path = Path(args.answers)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        rows = results["rows"]
        if not isinstance(rows, list) or not all(isinstance(r, dict) and {"label", "messages", "text"} <= set(r)
                                                 for r in rows):
            raise ValueError("rows lack label/messages/text")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CLIError(f"{path}: not a results.json of `aspd bench speed` ({_err(e)})") from None
    device = _device(args.device)
    hf_logging.set_verbosity_error()
    _score(rows, args.model, device, args.dtype)
    summary = nll_summary(rows)
    out = Path(args.out) if args.out else path.with_name("nll.json")
    report = {
        "config": {"command": command_line(getattr(args, "argv", None)), "answers": str(path), "model": args.model, "device": device,
                   "dtype": args.dtype},
        "machine": machine_info(device),
        "summary": summary,
        "rows": [{k: r.get(k) for k in ("label", "id", "category", "turn", "nll", "nll_tokens", "nll_sum")}
                 for r in rows],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    lines = ["| model | answers | scored | tokens | NLL mean | NLL median |", "|---|---:|---:|---:|---:|---:|"]
    for lab, s in summary.items():
        f = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
        lines.append(f"| {lab} | {s['answers']} | {s['scored_answers']} | {s['tokens']} | {f(s['nll_mean'])} | "
                     f"{f(s['nll_median'])} |")
    print("\n".join(lines))
    if args.update:
        cfg = results.setdefault("config", {})
        cfg["nll_model"] = args.model
        models = cfg.get("models", [])
        labels = [m["label"] for m in models] or list(summary)
        results["aggregates"] = aggregate(rows, labels, [m["label"] for m in models if m.get("role") == "model"],
                                          [m["label"] for m in models if m.get("role") == "baseline"])
        path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        path.with_suffix(".md").write_text(markdown(results), encoding="utf-8")
    print(f"aspd: wrote {out}", file=sys.stderr)
    return 0
