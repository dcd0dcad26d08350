"""Branch titles of parallel training samples that are not labels of independent content: meta titles (an
opening or closing sentence, a conclusion or summary, which depend on the other branches) and numbered generic ones
("Tip 1", "Step 2", which do not tell parallel branches apart).

Usage: python scripts/recipe/title_audit.py TRANSFORM.jsonl[.gz]
"""

from __future__ import annotations

import collections
import json
import re
import sys

from aspd.jsonl import iter_jsonl
from aspd.markup import parse

META = re.compile(r"(opening|closing|short|final|concluding)\s+(sentence|remark|paragraph)"
                  r"|^(conclusion|summary|summarizing|in summary|introduction|overview|explanation)$", re.I)
GENERIC = re.compile(r"^(tip|step|point|item|reason|way|idea|option|example|method|benefit|strategy|factor|part"
                     r"|aspect|myth|fact)\s*#?\d+$", re.I)


def label(title: str) -> str:
    """The title without markdown emphasis, list markers and a trailing colon."""
    return re.sub(r"^[-*\d.\s]+", "", re.sub(r"[*_:`]", "", title)).strip()


def main() -> None:
    samples = meta = generic = either = 0
    seen: collections.Counter[str] = collections.Counter()
    for _, row in iter_jsonl(sys.argv[1]):
        if not row["parallel"]:
            continue
        samples += 1
        titles = [label(b.title or "") for g in parse(row["markup"]).groups for b in g.branches]
        m = [t for t in titles if META.search(t)]
        g = [t for t in titles if GENERIC.match(t)]
        meta += bool(m)
        generic += bool(g)
        either += bool(m or g)
        seen.update(t.lower() for t in m + g)
    print(json.dumps({"parallel_samples": samples, "with_meta_title": meta, "with_generic_title": generic,
                      "with_either": either, "top": seen.most_common(12)}, indent=1))


if __name__ == "__main__":
    main()
