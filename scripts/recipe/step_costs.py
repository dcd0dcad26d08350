"""Where a hybrid answer's time goes, from an `aspd bench speed` results.json: serial ms per token, and for the
parallel stages the branch tokens per step (a group lasts as long as its longest branch) and ms per step.

Usage: python scripts/recipe/step_costs.py RESULTS_JSON TOKENIZER_MODEL [LABEL]
LABEL: only that model's rows (a run with several hybrid models).
"""

from __future__ import annotations

import json
import sys

from aspd.loading import load_tokenizer, model_folder
from aspd.markup import parse


def main() -> None:
    results = json.loads(open(sys.argv[1], encoding="utf-8").read())
    tok = load_tokenizer(model_folder(sys.argv[2]))
    label = sys.argv[3] if len(sys.argv) > 3 else None
    rows = [r for r in results["rows"] if r["mode"] == "hybrid" and r["groups"] and r["markup"]
            and label in (None, r["label"])]
    branch_tokens = steps = 0
    for r in rows:
        for g in parse(r["markup"]).groups:
            # Each branch also feeds its prefix "<|branch|>T:" and its <|/branch|>; count them as the engine does.
            lens = [len(tok(b.text)["input_ids"]) + len(tok(f"{b.title}:")["input_ids"]) + 2 for b in g.branches]
            branch_tokens += sum(lens)
            steps += max(lens)
    par_s = sum(r["parallel_seconds"] for r in rows)
    ser_s = sum(r["seconds"] - r["parallel_seconds"] for r in rows)
    ser_n = sum(r["tokens"] - r["parallel_tokens"] for r in rows)
    print(json.dumps({
        "answers_with_groups": len(rows),
        "serial_ms_per_token": round(1000 * ser_s / ser_n, 1),
        "parallel_branch_tokens": branch_tokens, "parallel_steps": steps,
        "tokens_per_parallel_step": round(branch_tokens / steps, 2),
        "ms_per_parallel_step": round(1000 * par_s / steps, 1),
        "parallel_tokens_per_s": round(sum(r["parallel_tokens"] for r in rows) / par_s, 1),
        "serial_tokens_per_s": round(ser_n / ser_s, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
