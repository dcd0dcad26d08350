"""Apply `aspd distill`'s current drop rules to an answers file made before they existed.

Usage: python scripts/recipe/refilter_answers.py ANSWERS.jsonl KEPT.jsonl DROPPED.jsonl
Prints the counts by reason. Used when the echo rule came after issue 17's first teacher run.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

from aspd.distill import drop_reason, iter_answers, question_text


def main() -> None:
    src, kept, dropped = sys.argv[1:4]
    why: Counter[str] = Counter()
    with open(kept, "w", encoding="utf-8") as fk, open(dropped, "w", encoding="utf-8") as fd:
        for r in iter_answers(src):
            reason = drop_reason(r["answer"], r.get("finish", "stop"), question_text(r))
            why[reason or "kept"] += 1
            (fd if reason else fk).write(json.dumps({**r, "drop_reason": reason} if reason else r,
                                                    ensure_ascii=False) + "\n")
    print(json.dumps(dict(why)))


if __name__ == "__main__":
    main()
