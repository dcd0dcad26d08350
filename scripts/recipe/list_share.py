"""Share of self-distilled answers that contain a list of two or more items (what the rule-based rewriter can use).

Usage: python scripts/recipe/list_share.py data/distill/answers_NAME.jsonl.gz [...]
"""

import gzip
import json
import re
import sys

ITEM = re.compile(r"(?m)^\s*(\d+[.)]|[-*•])\s+")

for path in sys.argv[1:]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        answers = [json.loads(line)["answer"] for line in f]
    lists = sum(len(ITEM.findall(a)) >= 2 for a in answers)
    print(f"{path}: {lists}/{len(answers)} answers ({lists / len(answers):.1%}) hold a list of >= 2 items")
