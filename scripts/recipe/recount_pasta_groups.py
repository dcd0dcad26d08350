"""Recount the PASTA rows' groups of a committed `aspd bench speed` run from their raw markup, and rebuild its
aggregates and results.md (issue 21).

Until the fix, the engine counted a PASTA scope as a group only when `</scope>` came: a scope cut by the token
limit had parallel tokens but no group, so PPD, ABN and the parallel TPS undercounted. The engine now counts a
scope when it opens (one group per opened scope with at least one async span). The rows' markup holds every
tag, so the counts can be recomputed without rerunning: each `<promise/>` belongs to the innermost open scope
(a span's text follows its promise, and a span closes its own scopes before `</async>`). Only the PASTA rows'
`groups`, `branches` and `abn` change; timings, tokens, DP and the judge's scores are the run's own.

Usage: python scripts/recipe/recount_pasta_groups.py RUN/results.json   (rewrites RUN/results.json and .md)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from aspd.bench.metrics import aggregate
from aspd.bench.report import write_results

TAG = re.compile(r"<scope>|</scope>|<async>|</async>|<promise/>")


def scope_forks(markup: str) -> list[int]:
    """Span count of each scope the markup opens, in opening order, scopes without a span left out (the
    engine's `stats.branches`). ValueError where the markup may not tell which scope a promise is in: in an
    answer with a span the limit cut, a promise in a scope that was opened inside a span (the cut span's text
    and its parent's continuation cannot be told apart)."""
    cut = markup.count("<async>") > markup.count("</async>")
    opened: list[int] = []
    in_span: list[bool] = []  # per opened scope: opened inside a span
    stack: list[int | None] = []  # open scopes (their index in `opened`) and open spans (None)
    for tag in TAG.findall(markup):
        if tag == "<scope>":
            opened.append(0)
            in_span.append(None in stack)
            stack.append(len(opened) - 1)
        elif tag in ("</scope>", "</async>"):
            stack.pop()
        elif tag == "<async>":
            stack.append(None)
        else:
            scope = next(i for i in reversed(stack) if i is not None)
            if cut and in_span[scope]:
                raise ValueError("a promise in a scope opened inside a span, in an answer with a cut span")
            opened[scope] += 1
    return [n for n in opened if n]


def recount(path: Path) -> dict[str, int]:
    results = json.loads(path.read_text(encoding="utf-8"))
    changed = parallel_before = parallel_after = 0
    for row in results["rows"]:
        if row["mode"] != "pasta":
            continue
        branches = scope_forks(row["markup"])
        parallel_before += row["groups"] > 0
        parallel_after += bool(branches)
        if branches != row["branches"]:
            changed += 1
            row.update(branches=branches, groups=len(branches),
                       abn=round(sum(branches) / len(branches), 3) if branches else 0.0)
    cfg = results["config"]
    labels = [m["label"] for m in cfg["models"]]
    models = [m["label"] for m in cfg["models"] if m["role"] == "model"]
    baselines = [m["label"] for m in cfg["models"] if m["role"] == "baseline"]
    results["aggregates"] = aggregate(results["rows"], labels, models, baselines)
    cfg["pasta_groups_recounted"] = ("PASTA groups recounted from the rows' markup: a scope counts when it opens "
                                     "(scripts/recipe/recount_pasta_groups.py, issue 21)")
    write_results(path.parent, results)
    return {"rows_changed": changed, "parallel_before": parallel_before, "parallel_after": parallel_after}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(json.dumps(recount(Path(sys.argv[1]))))
