"""Does an ASPD model reproduce the parallel structure of its own training answers? For N random parallel samples
of the teacher transform (layout speedup >= --min-layout, no context), compare the data's markup with the model's
answer to the same prompt: DP (tokens of branch bodies over all tokens, titles counted as serial, as the engine
decodes them), branches per group, and length.

Usage: python scripts/recipe/data_vs_model.py ANSWERS.jsonl TRANSFORM.jsonl --model aspd-smollm2-135m --n 40 \
           --out docs/results/models/data_vs_model_smollm2-135m.json
ANSWERS: the teacher answers (`zcat data/teacher/answers_qwen2.5-coder-1.5b.jsonl.gz`); TRANSFORM: their
`aspd transform` output (docs/results/data.md). Sampling as `aspd bench speed --paper-sampling
--repetition-penalty 1.05`, 512 new tokens.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable

from aspd.bench.metrics import parallel_stats
from aspd.engine import HybridEngine, Limits, SamplingParams
from aspd.jsonl import iter_jsonl
from aspd.markup import Document, parse
from aspd.pipeline.convert import layout_speedup


def shape(doc: Document, count: Callable[[str], int]) -> tuple[float, list[int], int]:
    """(DP with titles serial, branches per group, tokens) of a document."""
    s = parallel_stats(doc, count)  # the bench's counting: branch bodies parallel, titles serial
    return s.parallel_tokens / max(s.total_tokens, 1), [len(g.branches) for g in doc.groups], s.total_tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("answers")
    ap.add_argument("transform")
    ap.add_argument("--model", default="aspd-smollm2-135m")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-layout", type=float, default=1.5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    answers = {o["id"]: o for _, o in iter_jsonl(args.answers)}
    pool = [o for _, o in iter_jsonl(args.transform) if o["parallel"] and not answers[o["id"]].get("context")
            and layout_speedup(parse(o["markup"])) >= args.min_layout]
    eng = HybridEngine.from_pretrained(args.model, device=args.device)

    def count(text: str) -> int:
        return len(eng.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    sp = SamplingParams(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05, seed=0)
    rows = []
    for o in random.Random(args.seed).sample(pool, args.n):
        data_dp, data_branches, data_tokens = shape(parse(o["markup"]), count)
        t = time.perf_counter()
        gen = eng.generate(answers[o["id"]]["prompt"], sampling=sp, limits=Limits(max_new_tokens=512))
        model_dp, model_branches, model_tokens = shape(gen.doc, count)
        rows.append({"id": o["id"], "data_dp": data_dp, "data_branches": data_branches, "data_tokens": data_tokens,
                     "model_dp": model_dp, "model_branches": model_branches, "model_tokens": model_tokens,
                     "seconds": time.perf_counter() - t})
        print(json.dumps(rows[-1]), flush=True)
    grouped = [r for r in rows if r["model_branches"]]
    mean = statistics.mean
    summary = {
        "samples": len(rows), "model_grouped": len(grouped),
        "data_dp": mean(r["data_dp"] for r in rows), "model_dp": mean(r["model_dp"] for r in rows),
        "model_dp_grouped": mean(r["model_dp"] for r in grouped) if grouped else None,
        "data_branches_per_group": mean(b for r in rows for b in r["data_branches"]),
        "model_branches_per_group": mean(b for r in grouped for b in r["model_branches"]) if grouped else None,
        "data_tokens_median": statistics.median(r["data_tokens"] for r in rows),
        "model_tokens_median": statistics.median(r["model_tokens"] for r in rows),
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"settings": vars(args), "summary": summary, "rows": rows}, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
