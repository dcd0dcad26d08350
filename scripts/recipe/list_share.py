"""Share of self-distilled answers that contain a list of two or more items (what the rule-based rewriter can use).

Usage: python scripts/recipe/list_share.py data/distill/answers_NAME.jsonl.gz [...]
"""

import re
import sys

from aspd.jsonl import iter_jsonl

ITEM = re.compile(r"(?m)^\s*(\d+[.)]|[-*•])\s+")

for path in sys.argv[1:]:
    answers = [obj["answer"] for _, obj in iter_jsonl(path)]
    lists = sum(len(ITEM.findall(a)) >= 2 for a in answers)
    print(f"{path}: {lists}/{len(answers)} answers ({lists / len(answers):.1%}) hold a list of >= 2 items")
