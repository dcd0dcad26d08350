"""Join self-distilled answers ({id, answer}) with their prompts by id, giving `aspd transform` input.

Usage: python scripts/recipe/join_answers.py ANSWERS.jsonl[.gz] PROMPTS.jsonl OUT.jsonl [--limit N] [--every K] [--stop-only]
"""

from __future__ import annotations

import argparse
import gzip
import json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("answers")
    ap.add_argument("prompts")
    ap.add_argument("out")
    ap.add_argument("--limit", type=int, default=None, help="first N prompts (in prompt-file order)")
    ap.add_argument("--every", type=int, default=1, help="take every K-th prompt (a spread over all sources)")
    ap.add_argument("--stop-only", action="store_true", help="skip answers cut at the token limit")
    args = ap.parse_args()
    opener = gzip.open if args.answers.endswith(".gz") else open
    with opener(args.answers, "rt", encoding="utf-8") as f:
        answers = {r["id"]: r for r in map(json.loads, f)}
    n = 0
    with open(args.prompts, encoding="utf-8") as f, open(args.out, "w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            if i % args.every:
                continue
            p = json.loads(line)
            a = answers.get(p["id"])
            if a is None or not a["answer"].strip() or (args.stop_only and a["finish"] != "stop"):
                continue
            out.write(json.dumps({**p, "answer": a["answer"]}, ensure_ascii=False) + "\n")
            n += 1
            if args.limit is not None and n >= args.limit:
                break
    print(f"wrote {n} samples to {args.out}")


if __name__ == "__main__":
    main()
