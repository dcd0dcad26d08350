"""Join self-distilled answers ({id, answer, finish}) with their prompts by id, giving `aspd transform` input.

Usage: python scripts/recipe/join_answers.py ANSWERS.jsonl[.gz] PROMPTS.jsonl OUT.jsonl[.gz]
           [--limit N] [--every K] [--stop-only] [--redistributable]

Each output line is the prompt record plus `answer` and `finish`. A `.gz` OUT is written reproducibly (no
timestamp in the header), so rerunning the command gives the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
from typing import IO

from aspd.distill import iter_answers
from aspd.jsonl import iter_jsonl

# Sources of train_prompts.jsonl whose prompt text may be redistributed (its SOURCES.md): Apache-2.0, MIT
# (IFEval via microsoft/llm-steer-instruct) or CC0. Left out: alpaca_eval's and Stanford Alpaca's prompts,
# whose data is CC BY-NC 4.0.
REDISTRIBUTABLE = frozenset({"yizhongw/self-instruct", "LAION-AI/Open-Assistant", "lmarena/arena-hard-auto",
                             "microsoft/llm-steer-instruct", "f/awesome-chatgpt-prompts"})


def _open_out(path: str) -> IO[str]:
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.GzipFile(path, "wb", mtime=0), encoding="utf-8")
    return open(path, "w", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("answers")
    ap.add_argument("prompts")
    ap.add_argument("out")
    ap.add_argument("--limit", type=int, default=None, help="first N prompts (in prompt-file order)")
    ap.add_argument("--every", type=int, default=1, help="take every K-th prompt (a spread over all sources)")
    ap.add_argument("--stop-only", action="store_true", help="skip answers cut at the token limit")
    ap.add_argument("--redistributable", action="store_true",
                    help="only prompts whose licence allows shipping them (Apache-2.0, MIT, CC0)")
    args = ap.parse_args()
    answers = {r["id"]: r for r in iter_answers(args.answers)}
    n = 0
    with _open_out(args.out) as out:
        for i, (_, p) in enumerate(iter_jsonl(args.prompts)):
            if i % args.every:
                continue
            a = answers.get(p["id"])
            if a is None or not a["answer"].strip() or (args.stop_only and a["finish"] != "stop"):
                continue
            if args.redistributable and p.get("source") not in REDISTRIBUTABLE:
                continue
            out.write(json.dumps({**p, "answer": a["answer"], "finish": a["finish"]}, ensure_ascii=False) + "\n")
            n += 1
            if args.limit is not None and n >= args.limit:
                break
    print(f"wrote {n} samples to {args.out}")


if __name__ == "__main__":
    main()
