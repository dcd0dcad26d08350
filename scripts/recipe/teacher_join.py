"""Join the shipped teacher answers with their rule transform into `aspd transform` output rows.

Usage: python scripts/recipe/teacher_join.py ANSWERS.jsonl.gz TRANSFORM.jsonl.gz OUT.jsonl
The shipped files keep the transform compact ({id, markup, parallel}); `aspd transform --to-train` needs each
row's prompt (and context) and answer as well, which live in the answers file.
"""

from __future__ import annotations

import json
import sys

from aspd.distill import iter_answers
from aspd.jsonl import iter_jsonl


def rows(path: str):
    yield from (obj for _, obj in iter_jsonl(path))


def main() -> None:
    answers, transform, out = sys.argv[1:4]
    by_id = {r["id"]: r for r in iter_answers(answers)}
    n = missing = 0
    with open(out, "w", encoding="utf-8") as f:
        for t in rows(transform):
            a = by_id.get(t["id"])
            if a is None:
                missing += 1
                continue
            rec = {k: a[k] for k in ("id", "prompt", "context", "answer") if a.get(k)}
            f.write(json.dumps({**rec, "markup": t["markup"], "parallel": t["parallel"]}, ensure_ascii=False) + "\n")
            n += 1
    print(json.dumps({"rows": n, "without_answer": missing}))


if __name__ == "__main__":
    main()
