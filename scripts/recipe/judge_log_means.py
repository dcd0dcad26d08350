"""Mean single-answer grades from an `aspd bench quality` log (its stderr), for a grading that was cut short:
only questions and turns graded for every model count, so the means compare like with like.

Usage: python scripts/recipe/judge_log_means.py JUDGE_LOG
"""

from __future__ import annotations

import json
import re
import statistics
import sys

LINE = re.compile(r"\[judge \d+/\d+\] q(\S+) t(\d+) (\S+): (\d+)\s*$")


def main() -> None:
    grades: dict[tuple[str, str], dict[str, int]] = {}
    with open(sys.argv[1], encoding="utf-8") as f:
        for line in f:
            m = LINE.search(line)
            if m:
                grades.setdefault((m[1], m[2]), {})[m[3]] = int(m[4])
    models = sorted({label for g in grades.values() for label in g})
    both = [g for g in grades.values() if len(g) == len(models)]
    print(json.dumps({"graded_for_all": len(both), "answers_graded": sum(len(g) for g in grades.values()),
                      "means": {m: round(statistics.mean(g[m] for g in both), 3) for m in models} if both else {}},
                     indent=1))


if __name__ == "__main__":
    main()
