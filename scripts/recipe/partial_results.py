"""results.json / results.md from the rows of an `aspd bench speed` run that was cut before it ended
(rows.partial.jsonl): the same aggregates over the questions it finished, no NLL.

Usage: python scripts/recipe/partial_results.py ROWS.partial.jsonl OUT_DIR --command CMD --machine TEXT --date ISO \
           --torch VERSION --transformers VERSION   (the run's machine: the partial file does not record it)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aspd.bench.metrics import aggregate
from aspd.bench.report import overview, write_results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("rows")
    ap.add_argument("out")
    ap.add_argument("--command", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--torch", required=True)
    ap.add_argument("--transformers", required=True)
    args = ap.parse_args()
    lines = [json.loads(line) for line in open(args.rows, encoding="utf-8")]
    head, rows = lines[0]["partial_run"], lines[1:]
    labels = head["labels"]
    roles = {r["label"]: r["role"] for r in rows}
    finished = set.intersection(*({(r["id"], r["turn"]) for r in rows if r["label"] == x} for x in labels))
    rows = [r for r in rows if (r["id"], r["turn"]) in finished]  # turns every model answered
    results = {
        "config": {"command": args.command, "bench": f"{Path(head['bench_file']).stem} (cut before its end)", "bench_file": head["bench_file"],
                   "questions": len({r["id"] for r in rows}), "models": [{"label": x, "role": roles[x]} for x in labels],
                   "device": "cuda", "dtype": "auto", "sampling": head["sampling"], "limits": head["limits"],
                   "partial": True},
        "machine": {"gpu": args.machine, "torch": args.torch, "transformers": args.transformers, "date": args.date},
        "aggregates": aggregate(rows, labels, [x for x in labels if roles[x] == "model"],
                                [x for x in labels if roles[x] == "baseline"]),
        "rows": rows,
    }
    write_results(args.out, results)
    print(overview(results))


if __name__ == "__main__":
    main()
