"""`aspd bench speed`, `aspd bench nll`, `aspd bench quality` and `aspd bench exact`.

    aspd bench speed --model aspd-smollm2-135m --baseline seq-smollm2-135m \
        --baseline aspd-smollm2-135m:serial --bench vicuna --limit 20 --out runs/bench/vicuna
    aspd bench nll --answers runs/bench/vicuna/results.json --model smollm2-135m
    aspd bench quality --answers runs/bench/vicuna/results.json --judge-url http://localhost:8000/v1 \
        --judge-model gpt-4o --concurrency 8
    aspd bench exact --answers runs/bench/gsm8k/results.json --gold gsm8k_test.jsonl

Progress goes to stderr; the summary table to stdout; results.json + results.md to --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aspd.cli import CLIError
from aspd.engine.cli import (
    DTYPES,
    add_engine_arg,
    add_limit_args,
    add_sampling_args,
    limits_from_args,
    sampling_from_args,
)

REFERENCE_MODEL = "smollm2-135m"  # the original model the ASPD SmolLM2 fine-tune starts from


def _add_device(p: argparse.ArgumentParser, dtype_default: str = "auto") -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", default=dtype_default, choices=DTYPES,
                   help=f"default: {dtype_default}" + (" (bf16 on a capable GPU, else fp32)" if dtype_default == "auto"
                                                        else ""))


def _add_judge_inputs(p: argparse.ArgumentParser) -> None:
    """Where `bench quality` and `bench pairwise` find the judge prompts and reference answers."""
    p.add_argument("--bench-dir", default=None, metavar="DIR",
                   help="where judge_prompts.jsonl and reference_answer/ live (default: as for `bench speed`)")
    p.add_argument("--reference", default=None, metavar="FILE",
                   help="reference answers JSONL (default: reference_answer/<bench file stem>_gpt-4.jsonl)")


def _judge_inputs(args: argparse.Namespace, results: dict[str, Any], load_prompts: Callable[[Path], Any]
                  ) -> tuple[Path, Any, Path | None, dict[str, list[str]]]:
    """(bench dir, its judge prompts as `load_prompts` reads them, reference file or None, references)."""
    from aspd.bench.data import BenchDataError, find_bench_dir
    from aspd.bench.quality import default_reference_file, load_references

    try:
        bench_dir = find_bench_dir(args.bench_dir)
        prompts = load_prompts(bench_dir / "judge_prompts.jsonl")
        ref_file = (Path(args.reference) if args.reference
                    else default_reference_file(bench_dir, results.get("config", {}).get("bench_file")))
        references = load_references(ref_file) if ref_file else {}
    except BenchDataError as e:
        raise CLIError(str(e)) from None
    return bench_dir, prompts, ref_file, references


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """What `bench speed` and `bench ablation` share: the question set, device, sampling and limits."""
    p.add_argument("--bench", required=True, metavar="vicuna|mt|rag|FILE",
                   help="question set: a name from the bench directory or any JSONL of the same shape")
    p.add_argument("--bench-dir", default=None, metavar="DIR",
                   help="where vicuna/mt/rag live (default: $ASPD_BENCH_DIR, else shared/data/bench found "
                        "from the current directory upwards, else the copies of vicuna and mt shipped with aspd; "
                        "rag is not shipped)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N questions only")
    p.add_argument("--category", action="append", default=[], help="only this category; repeatable")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory for results.json and results.md (default: runs/bench/<bench>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the killed run in --out: keep the questions it finished, ask the rest")
    _add_device(p)
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"), help="attention backend (default sdpa)")
    add_engine_arg(p)
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="warm-up generations per model (default 1)")
    p.add_argument("--nll-model", default=None, metavar="NAME",
                   help="also score every answer's per-token NLL under this reference model (e.g. the original)")
    add_sampling_args(p, "sampling (default: greedy; the same for every model)",
                      "base seed; question i uses seed + i for every model (default 0)")
    add_limit_args(p)
    p.add_argument("--answer-prefix", default=None, metavar="TEXT",
                   help="advanced, for demos/tests: force the start of every hybrid answer (control tokens "
                        "written literally); the report flags it")


def register(sub: Any) -> None:
    """Add `bench` (with `speed`, `nll`, `quality` and `exact`) to the top-level `aspd` parser."""
    from aspd.engine.cli import _one_line_error

    bench = sub.add_parser("bench", help="speed (TPS, DP, speedup), NLL, judge quality and exact-match benchmarks",
                           description="Benchmarks on MT-Bench-style question sets.")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")

    p = bsub.add_parser(
        "speed", help="answer a question set with several models, interleaved, and compare speed",
        description="Every model answers every question in one process on one device: one warm-up each, then "
                    "questions interleaved with the model order rotating per question, the same sampling and "
                    "seed for all. Reports TPS, P-TPS, DP, ABN, PPD, latency and speedups against baselines.")
    p.add_argument("--model", action="append", required=True, metavar="SPEC",
                   help="model under test, NAME_OR_PATH[:hybrid|serial|pasta|sot][@MASK/POS] (default mode hybrid, modes "
                        "the model's own); repeatable")
    p.add_argument("--baseline", action="append", default=[], metavar="SPEC",
                   help="baseline, NAME_OR_PATH[:hybrid|serial|pasta|sot][@MASK/POS] (default mode serial); repeatable")
    _add_run_args(p)
    p.set_defaults(func=_cmd_speed)
    _one_line_error(p)

    p = bsub.add_parser(
        "ablation", help="one model under every mask and position mode of the paper's Table 4, against serial",
        description="Runs `bench speed` on one model decoded with each mask mode (indep, shared) and position "
                    "mode (same-seq, same-max, same-re, predict), plus the model decoding serially as the "
                    "baseline. Add --nll-model for a judge-free score, then `aspd bench quality` for a judge's. "
                    "This ablates decoding only; for training-time ablations train each variant "
                    "(`aspd train --mask-mode/--pos-mode`) and compare them with `bench speed`.")
    p.add_argument("--model", required=True, metavar="NAME_OR_PATH", help="the ASPD model")
    p.add_argument("--modes", default=None, metavar="MASK/POS,...",
                   help="only these pairs, e.g. indep/same-seq,shared/same-max (default: all eight)")
    _add_run_args(p)
    p.set_defaults(func=_cmd_ablation)
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

    p = bsub.add_parser(
        "quality", help="LLM-as-judge scores (MT-Bench single-answer grading, 1-10) of benchmark answers",
        description="Grade every answer with a judge model over an OpenAI-compatible endpoint, using MT-Bench's "
                    "single-answer prompts from judge_prompts.jsonl (reference-answer variants for math, "
                    "reasoning and coding; multi-turn variants for second turns). A reply without exactly one "
                    "[[N]] (1-10) is asked again with a fresh seed, then recorded as failed.")
    p.add_argument("--answers", required=True, metavar="FILE", help="results.json written by `aspd bench speed`")
    p.add_argument("--judge-url", required=True, metavar="URL",
                   help="OpenAI-compatible base URL including the API prefix, e.g. http://localhost:8000/v1")
    p.add_argument("--judge-model", required=True, metavar="M", help="judge model name sent to the endpoint")
    p.add_argument("--api-key", default=None, metavar="KEY", help="bearer token (default: $OPENAI_API_KEY)")
    p.add_argument("--out", default=None, metavar="FILE", help="quality JSON (default: quality.json beside --answers)")
    _add_judge_inputs(p)
    p.add_argument("--concurrency", type=int, default=8, metavar="N", help="requests in flight (default 8)")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="extra judge calls per answer after an unparseable reply (fresh seed each), and extra "
                        "HTTP attempts per call after a failed request (default 2)")
    p.add_argument("--backoff", type=float, default=1.0, metavar="S",
                   help="first HTTP retry delay, doubling per retry up to 30 s (default 1)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S", help="per-request timeout (default 120)")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="on-disk judge reply cache (default: none)")
    p.add_argument("--max-tokens", type=int, default=2048, metavar="N", help="judge reply limit (default 2048)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first judge call; retry i uses seed + i")
    p.add_argument("--retry-temperature", type=float, default=0.7, metavar="T",
                   help="sampling temperature of the calls after an unparseable reply (the first is greedy; "
                        "default 0.7)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="grade only the answers to the first N questions of the run (every model, every turn)")
    p.add_argument("--update", action="store_true",
                   help="also write judge_score/judge_error into the rows of --answers and the summary into it")
    p.set_defaults(func=_cmd_quality)
    _one_line_error(p)

    p = bsub.add_parser(
        "pairwise", help="pairwise judge: a model's answers against a baseline's, both orders, ties allowed",
        description="For every question (and turn) both labels answered, give a local judge model MT-Bench's "
                    "pairwise prompt twice (the model as assistant A, then as B) and read its verdict from the "
                    "likelihood of '[[A]]', '[[B]]' and '[[C]]' (tie). Win when both orders prefer the model, "
                    "loss when both prefer the baseline, else tie.")
    p.add_argument("--answers", required=True, metavar="FILE", help="results.json written by `aspd bench speed`")
    p.add_argument("--judge-model", required=True, metavar="NAME_OR_PATH",
                   help="judge model, registry name or folder, run in this process")
    p.add_argument("--model", default=None, metavar="LABEL", help="label of the judged model (default: the first)")
    p.add_argument("--baseline", default=None, metavar="LABEL",
                   help="label it is compared with (default: the first baseline)")
    _add_judge_inputs(p)
    p.add_argument("--out", default=None, metavar="FILE",
                   help="pairwise JSON (default: pairwise_MODEL_vs_BASELINE.json beside --answers)")
    _add_device(p)
    p.set_defaults(func=_cmd_pairwise)
    _one_line_error(p)

    p = bsub.add_parser(
        "exact", help="judge-free exact-match accuracy of final numbers against GSM8K-style gold answers",
        description="Compare the last number of every first-turn answer with the number after '####' in the "
                    "gold answer of the same question id; report accuracy per model label.")
    p.add_argument("--answers", required=True, metavar="FILE", help="results.json written by `aspd bench speed`")
    p.add_argument("--gold", required=True, metavar="FILE",
                   help="GSM8K-style JSONL: {question, answer} with the final number after '####'")
    p.add_argument("--out", default=None, metavar="FILE", help="exact JSON (default: exact.json beside --answers)")
    p.set_defaults(func=_cmd_exact)
    _one_line_error(p)

    p = bsub.add_parser(
        "report", help="merge `bench speed` runs into one Markdown report with the speedup-against-quality figure",
        description="One table row and one figure point per model and baseline of every run. Quality is the mean "
                    "judge score where `bench quality --update` added one, else the NLL under the reference model.")
    p.add_argument("results", nargs="+", metavar="RESULTS_JSON", help="results.json files of `aspd bench speed`")
    p.add_argument("--out", required=True, metavar="DIR", help="where report.md and report.png go")
    p.add_argument("--title", default="Benchmark report")
    p.set_defaults(func=_cmd_report)
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


def _cmd_ablation(args: argparse.Namespace) -> int:
    from aspd.layout import MaskMode, PosMode

    pairs = ([m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else
             [f"{m.value}/{p.value}" for m in MaskMode for p in PosMode])
    args.model, args.baseline = [f"{args.model}@{pair}" for pair in pairs], [f"{args.model}:serial"]
    return _cmd_speed(args)


def _cmd_speed(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from aspd.bench.data import BenchDataError, load_questions, resolve_bench
    from aspd.bench.metrics import aggregate
    from aspd.bench.report import command_line, machine_info, overview, write_results
    from aspd.bench.speed import PartialRun, load_engines, parse_specs, run_speed

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
    if args.resume and not args.out:
        raise CLIError("--resume needs the --out of the run to continue")
    out = Path(args.out or f"runs/bench/{bench_name}-{dt.datetime.now():%Y%m%d-%H%M%S}")
    partial = PartialRun(out, {"labels": [s.label for s in specs], "bench_file": str(bench_file),
                               "sampling": asdict(sampling), "limits": asdict(limits),
                               "answer_prefix": args.answer_prefix})
    done: list[dict[str, Any]] = []
    if partial.path.exists():
        if not args.resume:
            raise CLIError(f"{out} holds an unfinished run ({partial.path.name}): add --resume to continue it, "
                           "or remove that file")
        try:
            done = partial.load(questions, len(specs))
        except ValueError as e:
            raise CLIError(str(e)) from None
        print(f"aspd: resuming: {len({r['id'] for r in done})} of {len(questions)} questions already answered",
              file=sys.stderr)
    elif args.resume:
        raise CLIError(f"nothing to resume: {partial.path} does not exist")

    hf_logging.set_verbosity_error()
    try:
        engines = load_engines(specs, device=device, dtype=args.dtype, attn=args.attn, engine=args.engine)
    except Exception as e:  # one line for the user; the library raises as usual
        raise CLIError(f"cannot load a model: {_err(e)}") from None
    for s in specs:
        if s.mode == "hybrid" and not engines[s.key].is_aspd_model:
            print(f"aspd: note: {s.name} is not an ASPD model (no control tokens); it will answer serially",
                  file=sys.stderr)
    total = sum(len(q.turns) for q in questions) * len(specs)
    machine = machine_info(device)
    append, show = partial.start(done), _progress(total)

    def on_row(r: dict[str, Any]) -> None:
        append(r)
        show(r)

    try:
        rows, warm = run_speed(engines, specs, questions, sampling=sampling, limits=limits, warmup=args.warmup,
                               answer_prefix=args.answer_prefix, on_row=on_row, done=done)
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
            "models": [{**asdict(s), "is_aspd_model": engines[s.key].is_aspd_model,
                        "mask_mode": engines[s.key].mask_mode.value, "pos_mode": engines[s.key].pos_mode.value}
                       for s in specs],
            "device": device, "dtype": args.dtype, "attn": args.attn, "engine": args.engine, "sampling": asdict(sampling),
            "seed_rule": "question i uses sampling.seed + i", "limits": asdict(limits), "warmup": args.warmup,
            "nll_model": args.nll_model, "answer_prefix": args.answer_prefix, "resumed_rows": len(done),
        },
        "machine": machine,
        "warmup": warm,
        "aggregates": aggregate(rows, labels, [s.label for s in specs if s.role == "model"],
                                [s.label for s in specs if s.role == "baseline"]),
        "rows": rows,
    }
    js, md = write_results(out, results)
    partial.path.unlink()  # results.json now holds every row
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


def _load_answers(path: Path) -> dict[str, Any]:
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        rows = results["rows"]
        if not isinstance(rows, list) or not all(isinstance(r, dict) and {"label", "messages", "text"} <= set(r)
                                                 for r in rows):
            raise ValueError("rows lack label/messages/text")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CLIError(f"{path}: not a results.json of `aspd bench speed` ({_err(e)})") from None
    return results


def _cmd_quality(args: argparse.Namespace) -> int:
    import asyncio

    from aspd.bench.quality import (
        judge_rows,
        load_judge_prompts,
        quality_summary,
        quality_table,
    )
    from aspd.bench.report import command_line
    from aspd.pipeline.backends.openai_compat import OpenAICompatBackend

    if args.concurrency < 1:
        raise CLIError(f"--concurrency must be >= 1, not {args.concurrency}")
    if args.retries < 0:
        raise CLIError(f"--retries must be >= 0, not {args.retries}")
    if args.timeout <= 0:
        raise CLIError(f"--timeout must be > 0, not {args.timeout}")
    if args.backoff < 0:
        raise CLIError(f"--backoff must be >= 0, not {args.backoff}")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1, not {args.limit}")
    path = Path(args.answers)
    results = _load_answers(path)
    rows = results["rows"]
    if args.limit is not None:
        keep = set(list(dict.fromkeys(str(r.get("id")) for r in rows))[: args.limit])
        rows = [r for r in rows if str(r.get("id")) in keep]
    bench_dir, prompts, ref_file, references = _judge_inputs(args, results, load_judge_prompts)
    if ref_file is None:
        print("aspd: note: no reference answers found; math/reasoning/coding use the plain prompts",
              file=sys.stderr)
    backend = OpenAICompatBackend(args.judge_url, args.judge_model, args.api_key or os.environ.get("OPENAI_API_KEY"),
                                  concurrency=args.concurrency, timeout=args.timeout, retries=args.retries,
                                  backoff=args.backoff,
                                  judge_temperature=0.0, judge_max_tokens=args.max_tokens, seed=args.seed,
                                  cache_dir=args.cache_dir, name=f"judge:{args.judge_model}")
    n = len(rows)

    def show(i: int, r: dict[str, Any]) -> None:
        what = f"{r['score']:g}" if r["score"] is not None else f"FAILED ({r['error']})"
        print(f"[judge {i + 1}/{n}] q{r['id']} t{r['turn']} {r['label']}: {what}", file=sys.stderr, flush=True)

    graded = asyncio.run(judge_rows(backend, rows, prompts, references, args.retries, on_row=show,
                                    retry_temperature=args.retry_temperature))
    summary = quality_summary(graded)
    config = {"command": command_line(getattr(args, "argv", None)), "answers": str(path),
              "judge_url": args.judge_url, "judge_model": args.judge_model, "temperature": 0.0,
              "max_tokens": args.max_tokens, "seed": args.seed, "retries": args.retries, "limit": args.limit,
              "retry_temperature": args.retry_temperature,
              "judge_prompts": str(bench_dir / "judge_prompts.jsonl"),
              "reference": str(ref_file) if ref_file else None}
    out = Path(args.out) if args.out else path.with_name("quality.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": config, "summary": summary, "rows": graded}, indent=1,
                              ensure_ascii=False) + "\n", encoding="utf-8")
    print(quality_table(summary))
    if args.update:
        for row, g in zip(rows, graded, strict=True):
            row["judge_score"], row["judge_error"] = g["score"], g["error"]
        results["quality"] = {"config": config, "summary": summary}
        path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    failed = sum(g["score"] is None for g in graded)
    print(f"aspd: wrote {out}" + (f" and updated {path}" if args.update else "")
          + (f"; {failed} of {n} answers could not be graded" if failed else ""), file=sys.stderr)
    return 0


def _cmd_pairwise(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from aspd.bench.nll import load_reference
    from aspd.bench.pairwise import judge_pairs, load_pair_prompts, pairs, pairwise_summary
    from aspd.bench.report import command_line

    path = Path(args.answers)
    results = _load_answers(path)
    rows = results["rows"]
    models = results.get("config", {}).get("models", [])
    labels = list(dict.fromkeys(r["label"] for r in rows))
    model = args.model or next((m["label"] for m in models if m.get("role") == "model"), None)
    baseline = args.baseline or next((m["label"] for m in models if m.get("role") == "baseline"), None)
    for what, lab in (("--model", model), ("--baseline", baseline)):
        if lab not in labels:
            raise CLIError(f"{what} {lab!r} answered nothing in {path}; labels there: {', '.join(labels)}")
    assert model is not None and baseline is not None
    if not pairs(rows, model, baseline):
        raise CLIError(f"{path}: {model!r} and {baseline!r} answered no question in common")
    bench_dir, prompts, ref_file, references = _judge_inputs(args, results, load_pair_prompts)
    device = _device(args.device)
    hf_logging.set_verbosity_error()
    try:
        judge, tok = load_reference(args.judge_model, device=device, dtype=args.dtype)
    except Exception as e:
        raise CLIError(f"cannot load judge model {args.judge_model!r}: {_err(e)}") from None

    def show(r: dict[str, Any]) -> None:
        what = r["outcome"] or f"not judged ({r['error']})"
        print(f"[pairwise] q{r['id']} t{r['turn']}: {what}", file=sys.stderr, flush=True)

    records = judge_pairs(judge, tok, rows, model, baseline, prompts, references, on_pair=show)
    summary = pairwise_summary(records)
    config = {"command": command_line(getattr(args, "argv", None)), "answers": str(path), "model": model,
              "baseline": baseline, "judge_model": args.judge_model, "device": device, "dtype": args.dtype,
              "judge_prompts": str(bench_dir / "judge_prompts.jsonl"),
              "reference": str(ref_file) if ref_file else None}
    safe = lambda s: "".join(c if c.isalnum() or c in "-._" else "_" for c in s)  # noqa: E731
    out = Path(args.out) if args.out else path.with_name(f"pairwise_{safe(model)}_vs_{safe(baseline)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": config, "summary": summary, "records": records}, indent=1,
                              ensure_ascii=False) + "\n", encoding="utf-8")
    lines = [f"| {model} vs {baseline} | judged | win | tie | loss | win+tie | A-verdict share "
             "| debiased: model / baseline (p) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k, s in summary.items():
        f = lambda x: "–" if x is None else f"{x:.0%}"  # noqa: E731
        d = s["debiased"]
        lines.append(f"| {k} | {s['judged']}/{s['pairs']} | {s['win']} | {s['tie']} | {s['loss']} | "
                     f"{f(s['win_tie_rate'])} | {f(s['a_verdict_share'])} | {d['model']} / {d['baseline']} "
                     f"({d['sign_test_p']:.2f}) |")
    print("\n".join(lines))
    print(f"aspd: wrote {out}", file=sys.stderr)
    return 0


def _cmd_exact(args: argparse.Namespace) -> int:
    from aspd.bench.data import BenchDataError
    from aspd.bench.exact import exact_summary, exact_table, load_gold, score_exact
    from aspd.bench.report import command_line

    path = Path(args.answers)
    results = _load_answers(path)
    try:
        gold = load_gold(args.gold)
    except BenchDataError as e:
        raise CLIError(str(e)) from None
    scored = score_exact(results["rows"], gold)
    if not scored:
        raise CLIError(f"no first-turn answer in {path} has a question id found in {args.gold}")
    summary = exact_summary(scored)
    out = Path(args.out) if args.out else path.with_name("exact.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": {"command": command_line(getattr(args, "argv", None)),
                                          "answers": str(path), "gold": str(args.gold)},
                               "summary": summary, "rows": scored}, indent=1) + "\n", encoding="utf-8")
    print(exact_table(summary))
    print(f"aspd: wrote {out}", file=sys.stderr)
    return 0


def _cmd_nll(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from aspd.bench.metrics import aggregate
    from aspd.bench.nll import nll_summary
    from aspd.bench.report import command_line, machine_info, markdown

    path = Path(args.answers)
    results = _load_answers(path)
    rows = results["rows"]
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


def _cmd_report(args: argparse.Namespace) -> int:
    from aspd.bench.merge import report

    runs = [_load_answers(Path(path)) for path in args.results]  # a clear error for a file that is not one
    md, png = report(args.results, args.out, args.title, runs)
    print(md.read_text(encoding="utf-8"))
    print(f"aspd: wrote {md} and {png}", file=sys.stderr)
    return 0
