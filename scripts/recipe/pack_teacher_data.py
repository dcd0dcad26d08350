"""Pack the teacher data of issue 17 for the repository: redistributable prompt sources only, compact records.

Usage: python scripts/recipe/pack_teacher_data.py PROMPTS.jsonl[.gz] ANSWERS.jsonl[.gz] TRANSFORM.jsonl OUT_DIR
Writes OUT_DIR/prompts.jsonl.gz ({id, source, category, multipart?, prompt, context?}),
OUT_DIR/answers_qwen2.5-coder-1.5b.jsonl.gz (the prompt record + answer + finish) and
OUT_DIR/transform.jsonl.gz ({id, markup, parallel}; rules and span rewriter), and prints the counts left out by source.
"""

from __future__ import annotations

import collections
import gzip
import io
import json
import sys

from join_answers import REDISTRIBUTABLE

from aspd.jsonl import iter_jsonl

OURS = {"aspd-synth", "chatterbot-corpus==1.3.3"}  # written by the project's teacher run / BSD-3-Clause
KEEP = REDISTRIBUTABLE | OURS
PROMPT_FIELDS = ("id", "source", "category", "multipart", "prompt", "context")


def rows(path: str):
    yield from (obj for _, obj in iter_jsonl(path))


def write(path: str, items) -> int:
    n = 0
    with io.TextIOWrapper(gzip.GzipFile(path, "wb", mtime=0), encoding="utf-8") as out:
        for r in items:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def main() -> None:
    prompts, answers, transform, out = sys.argv[1:5]
    left_out: collections.Counter[str] = collections.Counter()
    keep_ids: set[str] = set()

    def prompt_rows():
        for r in rows(prompts):
            if r.get("source") not in KEEP:
                left_out[r.get("source", "?")] += 1
                continue
            keep_ids.add(r["id"])
            yield {k: r[k] for k in PROMPT_FIELDS if r.get(k) not in (None, "")}

    n_p = write(f"{out}/prompts.jsonl.gz", prompt_rows())
    n_a = write(f"{out}/answers_qwen2.5-coder-1.5b.jsonl.gz",
                ({**{k: r[k] for k in PROMPT_FIELDS if r.get(k) not in (None, "")}, "answer": r["answer"],
                  "finish": r["finish"]} for r in rows(answers) if r["id"] in keep_ids))
    n_t = write(f"{out}/transform.jsonl.gz",
                ({"id": r["id"], "markup": r["markup"], "parallel": r["parallel"]}
                 for r in rows(transform) if r["id"] in keep_ids))
    print(json.dumps({"prompts": n_p, "answers": n_a, "transform": n_t, "prompts_left_out": dict(left_out)}))


if __name__ == "__main__":
    main()
