"""`aspd transform`: serial answers -> parallel markup (DESIGN.md section 5), and `--to-train` conversion."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

EPILOG = """\
input lines: {id, question|prompt|instruction|messages, answer} with optional context, system, history
  (the train_prompts.jsonl layout with `prompt` + `context` works once an `answer` is added).
output lines: every input field, plus markup (the chosen parallel version, or the original answer),
  parallel (bool), candidates (raw replies, checks, votes, verdicts) and stats; OUT.summary.json sums up.

examples:
  aspd transform --input answers.jsonl --output par.jsonl \\
      --base-url http://localhost:8000/v1 --model Qwen2.5-7B-Instruct
  aspd transform --input answers.jsonl --output par.jsonl --rewriter rules --judge likelihood \\
      --target-model smollm2-135m
  aspd transform --input answers.jsonl --output par.jsonl --rewriter spans --local-model qwen2.5-coder-1.5b
  # the span rewriter offline, batched on a GPU: requests -> aspd distill -> replies
  aspd transform --input answers.jsonl --span-requests span_req.jsonl
  aspd distill --model qwen2.5-coder-1.5b --prompts span_req.jsonl --output span_rep.jsonl --temperature 0
  aspd transform --input answers.jsonl --output par.jsonl --rewriter spans --span-replies span_rep.jsonl \
      --judge likelihood --target-model smollm2-135m      # bad/missing replies: par.jsonl.span_retry.jsonl
  aspd transform --input answers.jsonl --output par.jsonl --resume            # after a crash or kill
  aspd transform --to-train par.jsonl --aspd train_aspd.jsonl --seq train_seq.jsonl
  aspd transform --dump-prompts > prompts.json   # edit, then --prompts prompts.json
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "transform", help="rewrite serial answers into parallel markup (the non-invasive data pipeline)",
        description="Four stages per sample: N rewrite candidates from an LLM (or rules); deterministic checks "
        "(strict parse, >= 2 branches, unique titles, content unchanged); K independence votes per group "
        "(failing groups become serial text again); K integrity and K answer votes (failing drops the "
        "candidate); selection by degree of parallelism, then branch count. A sample with no surviving "
        "candidate keeps its original answer. With --to-train, convert an output file into training files.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = p.add_argument_group("files")
    io.add_argument("--input", help="input JSONL")
    io.add_argument("--output", help="output JSONL (appended per sample; summary in OUTPUT.summary.json)")
    io.add_argument("--resume", action="store_true",
                    help="continue an existing output: skip ids already there, drop a torn last line")
    io.add_argument("--retry-failed", action="store_true",
                    help="with --resume: redo samples whose backend calls gave up (they were kept serial)")
    bad = io.add_mutually_exclusive_group()
    bad.add_argument("--skip-bad-lines", dest="strict", action="store_false",
                     help="report bad input lines (file:line) and skip them (default)")
    bad.add_argument("--strict", dest="strict", action="store_true", help="stop at the first bad input line")
    io.add_argument("--limit", type=int, default=None, help="only the first N usable samples")
    io.add_argument("--no-progress", action="store_true", help="no progress bar")

    st = p.add_argument_group("stages")
    st.add_argument("-n", "--candidates", type=int, default=3, help="rewrite candidates per sample (default 3)")
    st.add_argument("-k", "--votes", type=int, default=3, help="judge votes per decision, majority wins (default 3)")
    st.add_argument("--similarity", type=float, default=0.98,
                    help="min word similarity of the flattened candidate to the answer (default 0.98; 1 = exact)")
    st.add_argument("--prompts", default=None,
                    help="JSON file overriding some or all default prompts (see --dump-prompts)")
    st.add_argument("--dump-prompts", action="store_true", help="print the default prompts as JSON and exit")

    be = p.add_argument_group("backends")
    be.add_argument("--rewriter", choices=("openai", "local", "rules", "spans"), default="openai",
                    help="openai: any OpenAI-compatible endpoint; local: a Transformers model; rules: "
                    "lists/headings/steps/paragraphs, no LLM; spans: an LLM (--span-replies files, else "
                    "--local-model or --base-url/--model) groups numbered paragraphs and labels them, rules "
                    "set the heads and are the fallback (default openai)")
    be.add_argument("--judge", choices=("openai", "local", "likelihood", "none"), default=None,
                    help="default: the rewriter's kind for openai/local, none for rules/spans. likelihood only "
                    "votes on independence (integrity/answer stages are then skipped)")
    be.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL"),
                    help="OpenAI-compatible base URL incl. /v1 (default $OPENAI_BASE_URL)")
    be.add_argument("--api-key", default=None, help="default $OPENAI_API_KEY (none sent when unset)")
    be.add_argument("--model", default=None, help="model name at the endpoint")
    be.add_argument("--judge-base-url", default=None, help="a separate endpoint for the judge (default --base-url)")
    be.add_argument("--judge-model", default=None, help="a separate judge model (default --model)")
    be.add_argument("--local-model", default=None, help="registry name or HF folder for the local backend")
    be.add_argument("--target-model", default=None,
                    help="the model whose answers these are (used by the likelihood judge)")
    be.add_argument("--likelihood-threshold", type=float, default=None,
                    help="likelihood judge: max share of branch tokens whose prediction may change when the "
                    "siblings are hidden (default: the judge's own)")
    be.add_argument("--likelihood-max-nll-increase", type=float, default=None,
                    help="likelihood judge: max NLL rise in nats/token (default: the judge's own)")
    be.add_argument("--device", default=None, help="for local / likelihood models: cpu, cuda, ...")
    be.add_argument("--dtype", default="auto", help="for the local model (default auto)")
    be.add_argument("--no-batching", action="store_true",
                    help="local backend: one request at a time through generate, not aspd's continuous batching")

    sa = p.add_argument_group("sampling and requests")
    sa.add_argument("--temperature", type=float, default=0.7, help="rewrite temperature (default 0.7)")
    sa.add_argument("--judge-temperature", type=float, default=0.7, help="judge temperature (default 0.7)")
    sa.add_argument("--top-p", type=float, default=None)
    sa.add_argument("--max-tokens", type=int, default=None,
                    help="rewrite reply cap (openai default: the server's; local default 2048)")
    sa.add_argument("--judge-max-tokens", type=int, default=None,
                    help="judge reply cap (openai default: the server's; local default 256)")
    sa.add_argument("--seed", type=int, default=0, help="request i of a batch uses seed + i")
    sa.add_argument("--extra-body", default=None, metavar="JSON",
                    help="extra fields for every openai request, e.g. '{\"top_k\": 20}' or "
                    "'{\"chat_template_kwargs\": {\"enable_thinking\": false}}'")
    sa.add_argument("--concurrency", type=int, default=8, help="HTTP requests in flight (default 8)")
    sa.add_argument("--workers", type=int, default=16, help="samples in flight (default 16)")
    sa.add_argument("--timeout", type=float, default=300.0, help="seconds per HTTP request (default 300)")
    sa.add_argument("--retries", type=int, default=4, help="retries per request (default 4)")
    sa.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each time")
    sa.add_argument("--backoff-max", type=float, default=60.0, help="cap on one retry delay (default 60)")
    sa.add_argument("--cache-dir", default=None, help="reply cache folder (default OUTPUT.cache)")
    sa.add_argument("--no-cache", action="store_true", help="do not read or write the reply cache")

    sp = p.add_argument_group("rules and span rewriter")
    sp.add_argument("--min-words", type=int, default=None,
                    help="answers under this many words stay serial (rules and spans; default 100, ~128 tokens)")
    sp.add_argument("--span-requests", metavar="REQ.jsonl", default=None,
                    help="write one span chat request per --input answer ({id, messages}, for `aspd distill "
                    "--prompts`) and exit")
    sp.add_argument("--span-replies", metavar="REP.jsonl", action="append", default=None,
                    help="`aspd distill` output answering span requests (repeatable: a retry round's replies "
                    "join the first); makes --rewriter spans run offline")
    sp.add_argument("--span-retry", metavar="RETRY.jsonl", default=None,
                    help="offline spans: where requests for missing/bad replies go (default OUTPUT.span_retry.jsonl)")
    sp.add_argument("--span-rounds", type=int, default=2,
                    help="online spans: asks per candidate, a bad reply being answered with its problems (default 2)")
    sp.add_argument("--no-rule-fallback", action="store_true",
                    help="spans: no rule candidates for samples without a usable span reply")

    cv = p.add_argument_group("conversion to training files (instead of transforming)")
    cv.add_argument("--to-train", metavar="OUT.jsonl", default=None, help="a transform output to convert")
    cv.add_argument("--aspd", metavar="A.jsonl", default=None, help="write {id, messages, answer} with markup")
    cv.add_argument("--seq", metavar="S.jsonl", default=None, help="write the same answers flattened")
    cv.add_argument("--parallel-only", action="store_true", help="convert only samples made parallel")
    cv.add_argument("--serial-share", type=float, default=None, metavar="F",
                    help="keep all parallel samples and add kept-serial ones until they are this share (0-1)")
    cv.add_argument("--min-layout-speedup", type=float, default=None, metavar="X",
                    help="write parallel samples serially when their layout allows less than X: words over "
                    "decode steps, a group costing its longest branch (e.g. 1.5)")
    p.set_defaults(func=run, strict=False)


def _fail(message: str) -> None:
    from aspd.cli import CLIError

    raise CLIError(message)


def _openai(args: argparse.Namespace, prompts: Any, *, judge: bool) -> Any:
    from aspd.pipeline.backends.openai_compat import OpenAICompatBackend

    base_url = (args.judge_base_url if judge else None) or args.base_url
    model = (args.judge_model if judge else None) or args.model
    if not base_url:
        _fail("the openai backend needs --base-url (or $OPENAI_BASE_URL)")
    if not model:
        _fail("the openai backend needs --model")
    cache = None if args.no_cache else (args.cache_dir or f"{args.output}.cache")
    extra = None
    if args.extra_body:
        try:
            extra = json.loads(args.extra_body)
        except ValueError as e:
            _fail(f"--extra-body is not valid JSON: {e}")
        if not isinstance(extra, dict):
            _fail("--extra-body must be a JSON object")
    return OpenAICompatBackend(
        base_url, model, args.api_key or os.environ.get("OPENAI_API_KEY"), prompts=prompts,
        concurrency=args.concurrency, timeout=args.timeout, retries=args.retries, backoff=args.backoff,
        backoff_max=args.backoff_max, temperature=args.temperature, judge_temperature=args.judge_temperature,
        top_p=args.top_p, max_tokens=args.max_tokens, judge_max_tokens=args.judge_max_tokens, seed=args.seed,
        cache_dir=cache, extra_body=extra,
    )


def _local(args: argparse.Namespace, prompts: Any) -> Any:
    from aspd.pipeline.backends.local import LocalBackend

    if not args.local_model:
        _fail("the local backend needs --local-model")
    kw: dict[str, Any] = {}
    if args.max_tokens is not None:
        kw["max_new_tokens"] = args.max_tokens
    if args.judge_max_tokens is not None:
        kw["judge_max_new_tokens"] = args.judge_max_tokens
    return LocalBackend(args.local_model, prompts=prompts, device=args.device, dtype=args.dtype,
                        temperature=args.temperature, judge_temperature=args.judge_temperature, top_p=args.top_p,
                        seed=args.seed, batching=not args.no_batching, **kw)


def _likelihood_options(args: argparse.Namespace) -> dict[str, Any]:
    """The likelihood judge's options given on the command line (the judge's own defaults otherwise)."""
    kw: dict[str, Any] = {"device": args.device, "dtype": args.dtype}
    if args.likelihood_threshold is not None:
        kw["max_changed"] = args.likelihood_threshold
    if args.likelihood_max_nll_increase is not None:
        kw["max_nll_increase"] = args.likelihood_max_nll_increase
    return kw


def _min_words(args: argparse.Namespace) -> dict[str, int]:
    return {} if args.min_words is None else {"min_words": args.min_words}


def _spans(args: argparse.Namespace, prompts: Any) -> tuple[Any, Any]:
    """(span rewriter, its chat backend or None when offline)."""
    from aspd.pipeline.rules import RuleRewriter
    from aspd.pipeline.spans import RetryFile, SpanRewriter, read_replies

    fallback = None if args.no_rule_fallback else RuleRewriter(**_min_words(args))
    if args.span_replies:
        try:
            replies = read_replies(args.span_replies)
        except ValueError as e:
            _fail(str(e))
        # A fresh run starts a fresh retry file; a resumed one adds the samples it still processes.
        retry = RetryFile(args.span_retry or f"{args.output}.span_retry.jsonl", append=args.resume)
        return SpanRewriter(replies=replies, prompts=prompts, fallback=fallback, retry=retry,
                            **_min_words(args)), None
    chat = _local(args, prompts) if args.local_model else _openai(args, prompts, judge=False)
    return SpanRewriter(chat, prompts=prompts, fallback=fallback, rounds=args.span_rounds, **_min_words(args)), chat


def build_backends(args: argparse.Namespace, prompts: Any) -> tuple[Any, Any]:
    """(rewriter, judge or None). Same kind and settings for both: one shared instance (one cache, one limit)."""
    judge_kind = args.judge or (args.rewriter if args.rewriter in ("openai", "local") else "none")
    chat = None  # the LLM backend behind the rewriter, which a judge of the same kind shares
    if args.rewriter == "openai":
        rewriter = chat = _openai(args, prompts, judge=False)
    elif args.rewriter == "local":
        rewriter = chat = _local(args, prompts)
    elif args.rewriter == "spans":
        rewriter, chat = _spans(args, prompts)
    else:
        from aspd.pipeline import rules

        rewriter = rules.RuleRewriter(**_min_words(args))
    chat_kind = {"OpenAICompatBackend": "openai", "LocalBackend": "local"}.get(type(chat).__name__)
    if judge_kind == "none":
        judge = None
    elif judge_kind == chat_kind == "openai" and not (args.judge_model or args.judge_base_url):
        judge = chat
    elif judge_kind == chat_kind == "local":
        judge = chat
    elif judge_kind == "openai":
        judge = _openai(args, prompts, judge=True)
    elif judge_kind == "local":
        judge = _local(args, prompts)
    else:
        from aspd.pipeline import likelihood

        if not args.target_model:
            _fail("--judge likelihood needs --target-model (the model whose answers these are)")
        judge = likelihood.LikelihoodJudge(args.target_model, **_likelihood_options(args))
    return rewriter, judge


def run(args: argparse.Namespace) -> int:
    from aspd.pipeline.prompts import DEFAULT_PROMPTS, PromptError, load_prompts
    from aspd.pipeline.runner import InputError

    if args.dump_prompts:
        print(json.dumps(DEFAULT_PROMPTS.to_dict(), indent=2, ensure_ascii=False))
        return 0
    if args.to_train:
        from aspd.pipeline.convert import convert

        if args.input or args.output:
            _fail("--to-train converts an existing output; it does not take --input/--output")
        try:
            counts = convert(args.to_train, args.aspd, args.seq, parallel_only=args.parallel_only,
                             serial_share=args.serial_share, min_layout_speedup=args.min_layout_speedup)
        except InputError as e:
            _fail(str(e))
        written = ", ".join(f"{name} {path}" for name, path in (("ASPD", args.aspd), ("Seq", args.seq)) if path)
        print(f"aspd transform: wrote {counts['written']} sample(s) ({counts['parallel']} parallel, "
              f"{counts['flattened']} flattened, {counts['skipped']} skipped) to {written}")
        return 0
    if args.span_requests:
        return _write_span_requests(args)
    if not args.input or not args.output:
        _fail("give --input and --output (or --to-train OUT.jsonl --aspd A.jsonl --seq S.jsonl)")
    if args.span_replies and args.rewriter != "spans":
        _fail("--span-replies is for --rewriter spans")
    if args.min_words is not None and args.min_words < 0:
        _fail("--min-words must be >= 0")
    if args.retry_failed and not args.resume:
        _fail("--retry-failed needs --resume")
    for name in ("candidates", "votes", "concurrency", "workers"):
        if getattr(args, name) < 1:
            _fail(f"--{name} must be >= 1")
    if not 0.0 <= args.similarity <= 1.0:
        _fail("--similarity must be in [0, 1]")
    if args.retries < 0 or args.timeout <= 0:
        _fail("--retries must be >= 0 and --timeout > 0")
    try:
        prompts = load_prompts(args.prompts)
    except PromptError as e:
        _fail(str(e))
    from aspd.pipeline.runner import RunConfig, format_summary, transform
    from aspd.pipeline.stages import StageConfig

    rewriter, judge = build_backends(args, prompts)
    cfg = RunConfig(StageConfig(n=args.candidates, k=args.votes, similarity=args.similarity), workers=args.workers,
                    resume=args.resume, retry_failed=args.retry_failed, strict=args.strict, limit=args.limit,
                    progress=not args.no_progress)
    try:
        summary = transform(args.input, args.output, rewriter, judge, cfg)
    except InputError as e:
        _fail(str(e))
    finally:
        retry = getattr(rewriter, "retry", None)
        if retry is not None:
            retry.close()
    print(format_summary(summary))
    print(f"aspd transform: wrote {args.output} and {args.output}.summary.json", file=sys.stderr)
    if retry is not None:
        print(f"aspd transform: {retry.written} span request(s) without a usable reply written to {retry.path} "
              "(answer them with aspd distill, then add the replies with another --span-replies)", file=sys.stderr)
    return 0


def _write_span_requests(args: argparse.Namespace) -> int:
    from aspd.pipeline.prompts import PromptError, load_prompts
    from aspd.pipeline.runner import InputError, read_samples
    from aspd.pipeline.spans import write_requests

    if not args.input:
        _fail("--span-requests needs --input (the answers to ask about)")
    if args.output:
        _fail("--span-requests only writes requests; it does not take --output")
    try:
        prompts = load_prompts(args.prompts)
        samples = read_samples(args.input, strict=args.strict).samples
    except (PromptError, InputError) as e:
        _fail(str(e))
    samples = samples[: args.limit] if args.limit is not None else samples
    counts = write_requests(samples, args.span_requests, prompts, **_min_words(args))
    print(f"aspd transform: wrote {counts['requests']} span request(s) for {counts['samples']} sample(s) to "
          f"{args.span_requests} (the others are too short or have under two paragraphs of text)")
    return 0
