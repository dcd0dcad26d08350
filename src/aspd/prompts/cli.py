"""`aspd prompts requests | collect | merge | decontaminate | import`: build the training prompt set.

Prompt records are JSONL lines {id, source, category, multipart?, prompt, context?}; files ending in .gz are
read and written gzipped. Outputs are written whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aspd.cli import CLIError

EPILOG = """\
order (data/prompts/README.md):
  aspd prompts requests --n 20000 --seed 0 --output synth_requests.jsonl.gz
  aspd distill --model qwen2.5-coder-1.5b --prompts synth_requests.jsonl --output answered.jsonl  (GPU)
  aspd prompts collect --input answered.jsonl --output synth_prompts.jsonl --report collect.json
  aspd prompts import chatterbot-corpus --wheel chatterbot_corpus-1.3.3-py2.py3-none-any.whl --output cb.jsonl
  aspd prompts merge --input train_prompts.jsonl --input synth_prompts.jsonl --input cb.jsonl \\
      --output all.jsonl --report merge_report.json
  aspd prompts decontaminate --input all.jsonl --output clean.jsonl --report decontam.json
"""


def register(sub: Any) -> None:
    p = sub.add_parser("prompts", help="training prompts: synthetic requests, collect, merge+dedup, decontaminate",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = p.add_subparsers(dest="prompts_command", required=True, metavar="ACTION")

    r = cmds.add_parser("requests", help="generation requests: the teacher writes one user message each")
    r.add_argument("--output", required=True)
    r.add_argument("--n", type=int, required=True, help="number of requests")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--categories", default=None, help="comma-separated subset (default: all)")
    r.set_defaults(func=run_requests)

    c = cmds.add_parser("collect", help="teacher replies (from `aspd distill`) -> prompt records, with drop reasons")
    c.add_argument("--input", required=True, help="answered requests: records with id, category, answer, finish")
    c.add_argument("--output", required=True)
    c.add_argument("--report", default=None, help="JSON with counts per drop reason and category")
    c.set_defaults(func=run_collect)

    m = cmds.add_parser("merge", help="union of prompt files, exact and near-duplicates removed")
    m.add_argument("--input", action="append", required=True, help="prompt JSONL (repeat; earlier files win)")
    m.add_argument("--output", required=True)
    m.add_argument("--report", required=True)
    m.add_argument("--near", type=float, default=0.7,
                   help="character 5-gram Jaccard at which two prompts are near-duplicates (default 0.7)")
    m.set_defaults(func=run_merge)

    d = cmds.add_parser("decontaminate", help="drop prompts that overlap a benchmark question")
    d.add_argument("--input", required=True)
    d.add_argument("--output", required=True)
    d.add_argument("--report", required=True)
    d.add_argument("--bench-dir", default=None,
                   help="folder with vicuna_bench.jsonl, mt_bench.jsonl, rag_bench.jsonl "
                        "(default: $ASPD_BENCH_DIR or shared/data/bench above the working directory)")
    d.add_argument("--bench-file", action="append", default=[], help="another question file to check against")
    d.add_argument("--jaccard", type=float, default=0.6)
    d.add_argument("--contained", type=float, default=0.9)
    d.add_argument("--min-prompt-shingles", type=int, default=50)
    d.set_defaults(func=run_decontaminate)

    i = cmds.add_parser("import", help="a prompt set shipped in a registry package -> prompt records")
    i.add_argument("set", choices=["chatterbot-corpus"])
    i.add_argument("--wheel", required=True, help="the downloaded wheel (pip download --no-deps ...)")
    i.add_argument("--output", required=True)
    i.set_defaults(func=run_import)


def _summary(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False), file=sys.stderr)


# ------------------------------------------------------------------------------------------------ requests


def run_requests(args: argparse.Namespace) -> int:
    from aspd.prompts.requests import build_requests
    from aspd.prompts.text import write_jsonl

    cats = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    try:
        rows = build_requests(args.n, args.seed, cats)
    except ValueError as e:
        raise CLIError(str(e)) from None
    write_jsonl(args.output, rows)
    counts = Counter(f"{r['category']}/{'multi' if r['multipart'] else 'single'}" for r in rows)
    _summary({"requests": len(rows), "output": args.output, "by_category": dict(sorted(counts.items()))})
    return 0


# ------------------------------------------------------------------------------------------------ collect


def run_collect(args: argparse.Namespace) -> int:
    from aspd.prompts.collect import collect
    from aspd.prompts.text import read_jsonl, write_json, write_jsonl

    rows = [(f"{args.input}:{n}", obj) for n, obj in read_jsonl(args.input)]
    try:
        got = collect(rows)
    except ValueError as e:
        raise CLIError(str(e)) from None
    write_jsonl(args.output, got.records)
    report = {"input": args.input, "replies": len(rows), "kept": len(got.records),
              "dropped": {k: v for k, v in got.reasons.most_common() if k != "ok"},
              "by_category": {c: dict(v.most_common()) for c, v in sorted(got.by_category.items())},
              "multipart_kept": dict(Counter(str(r["multipart"]).lower() for r in got.records))}
    if args.report:
        write_json(args.report, report)
    _summary({k: report[k] for k in ("replies", "kept", "dropped")})
    return 0


# ------------------------------------------------------------------------------------------------ merge


def prompt_text(obj: dict[str, Any]) -> str:
    """What the model is shown: the prompt, then its context (the Alpaca-style input) if any."""
    ctx = obj.get("context") or ""
    return f"{obj['prompt']}\n\n{ctx}" if ctx else obj["prompt"]


def read_prompt_files(paths: list[str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(records of all files in order, count per file); a record without id or source gets file stem + line
    and the file stem."""
    from aspd.prompts.text import read_jsonl

    out: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    per_file: dict[str, int] = {}
    for path in paths:
        stem = Path(path).name.removesuffix(".gz").removesuffix(".jsonl")
        for n, obj in read_jsonl(path):
            where = f"{path}:{n}"
            if not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
                raise CLIError(f"{where}: needs a non-empty 'prompt' string")
            if not isinstance(obj.get("context", ""), str | None):
                raise CLIError(f"{where}: 'context' must be a string")
            obj.setdefault("id", f"{stem}-{n}")
            obj["id"] = str(obj["id"])
            obj.setdefault("source", stem)
            if obj["id"] in seen:
                raise CLIError(f"{where}: id {obj['id']!r} already used at {seen[obj['id']]}")
            seen[obj["id"]] = where
            out.append(obj)
            per_file[path] = per_file.get(path, 0) + 1
    return out, per_file


def _counts(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    return dict(sorted(Counter(str(r.get(key, "unknown")).lower() if key == "multipart" else str(r.get(key))
                               for r in rows).items()))


def run_merge(args: argparse.Namespace) -> int:
    from aspd.prompts.dedup import find_duplicates
    from aspd.prompts.text import write_json, write_jsonl

    t0 = time.perf_counter()
    rows, per_file = read_prompt_files(args.input)
    try:
        removed = find_duplicates([prompt_text(r) for r in rows], args.near)
    except ValueError as e:
        raise CLIError(str(e)) from None
    gone = {d.index for d in removed}
    kept = [r for i, r in enumerate(rows) if i not in gone]
    write_jsonl(args.output, kept)
    by_source: dict[str, Counter[str]] = {}
    for r in rows:
        by_source.setdefault(r["source"], Counter())["in"] += 1
    for d in removed:
        by_source[rows[d.index]["source"]][f"{d.kind}_duplicate"] += 1
    for r in kept:
        by_source[r["source"]]["kept"] += 1
    report = {
        "command": "aspd " + " ".join(getattr(args, "argv", [])),
        "inputs": per_file,
        "records_in": len(rows), "kept": len(kept),
        "removed": {"exact": sum(d.kind == "exact" for d in removed), "near": sum(d.kind == "near" for d in removed)},
        "near_threshold": args.near,
        "by_source": {s: dict(c) for s, c in sorted(by_source.items())},
        "kept_by_category": _counts(kept, "category"), "kept_by_multipart": _counts(kept, "multipart"),
        "kept_by_source_and_category": {s: _counts([r for r in kept if r["source"] == s], "category")
                                        for s in sorted(by_source)},
        "duplicates": [{"id": rows[d.index]["id"], "duplicate_of": rows[d.kept]["id"], "kind": d.kind,
                        "jaccard": d.score} for d in removed],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(args.report, report)
    _summary({k: report[k] for k in ("records_in", "kept", "removed", "seconds")})
    return 0


# ------------------------------------------------------------------------------------------------ decontaminate


def run_decontaminate(args: argparse.Namespace) -> int:
    from aspd.bench.data import BenchDataError, find_bench_dir
    from aspd.prompts.decontam import Rules, find_hits, load_bench_items
    from aspd.prompts.text import write_json, write_jsonl

    t0 = time.perf_counter()
    try:
        rules = Rules(args.jaccard, args.contained, args.min_prompt_shingles)
        per_file = load_bench_items(find_bench_dir(args.bench_dir), args.bench_file)
    except (ValueError, BenchDataError) as e:
        raise CLIError(str(e)) from None
    items = [it for its in per_file.values() for it in its]
    rows, _ = read_prompt_files([args.input])
    hits = find_hits([prompt_text(r) for r in rows], items, rules)
    gone = {h.index for h in hits}
    kept = [r for i, r in enumerate(rows) if i not in gone]
    write_jsonl(args.output, kept)
    report = {
        "command": "aspd " + " ".join(getattr(args, "argv", [])),
        "bench_items": {p: len(its) for p, its in per_file.items()},
        "rules": {"shingles": "character 5-grams of case-folded text, punctuation as space",
                  "jaccard": rules.jaccard, "bench_in_prompt": rules.contained, "prompt_in_bench": rules.contained,
                  "prompt_in_bench_min_shingles": rules.min_prompt_shingles},
        "records_in": len(rows), "removed": len(gone), "kept": len(kept),
        "removed_by_source": dict(Counter(rows[i]["source"] for i in sorted(gone)).most_common()),
        "hits_by_rule": dict(Counter(h.rule for h in hits).most_common()),
        "hits": [{"id": rows[h.index]["id"], "bench_id": h.bench_id, "rule": h.rule, "score": h.score,
                  "jaccard": h.jaccard, "bench_in_prompt": h.bench_in_prompt, "prompt_in_bench": h.prompt_in_bench}
                 for h in hits],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(args.report, report)
    _summary({k: report[k] for k in ("records_in", "removed", "kept", "hits_by_rule", "seconds")})
    return 0


# ------------------------------------------------------------------------------------------------ import


def run_import(args: argparse.Namespace) -> int:
    from aspd.prompts.importers import chatterbot_prompts
    from aspd.prompts.text import write_jsonl

    try:
        rows, info = chatterbot_prompts(args.wheel)
    except ValueError as e:
        raise CLIError(str(e)) from None
    write_jsonl(args.output, rows)
    _summary(info)
    return 0
