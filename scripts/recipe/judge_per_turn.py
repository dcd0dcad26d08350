"""Judge scores per turn of a judged `aspd bench speed` run (the report pools the turns).

Usage: python scripts/recipe/judge_per_turn.py RUN/results.json [...]
Prints, per run, model label and turn: the mean score and how many of the answers the judge scored.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def per_turn(rows: list[dict]) -> dict[tuple[str, int], tuple[float | None, int, int]]:
    scores: dict[tuple[str, int], list[float]] = defaultdict(list)
    answers: dict[tuple[str, int], int] = defaultdict(int)
    for r in rows:
        key = (r["label"], r["turn"])
        answers[key] += 1
        if r.get("judge_score") is not None:
            scores[key].append(r["judge_score"])
    return {k: (sum(scores[k]) / len(scores[k]) if scores[k] else None, len(scores[k]), n)
            for k, n in sorted(answers.items())}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        print(f"{path}:")
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)["rows"]
        for (label, turn), (mean, scored, n) in per_turn(rows).items():
            print(f"  {label} turn {turn}: {'-' if mean is None else f'{mean:.2f}'} ({scored} of {n} scored)")
