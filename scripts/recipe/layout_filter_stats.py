"""What `aspd transform --to-train --min-layout-speedup X` keeps of the parallel samples, per X: how many, the share
of their words inside branches with titles counted as serial (as the engine decodes them), and branches per group.

Usage: python scripts/recipe/layout_filter_stats.py TRANSFORM.jsonl [X ...]   (default X: 1.0 1.5 2.0)
"""

from __future__ import annotations

import statistics
import sys

from aspd.bench.metrics import dp
from aspd.jsonl import iter_jsonl
from aspd.markup import parse
from aspd.pipeline.convert import layout_speedup


def main() -> None:
    docs = [parse(o["markup"]) for _, o in iter_jsonl(sys.argv[1]) if o["parallel"]]
    scored = [(layout_speedup(d), d) for d in docs]
    for x in [float(a) for a in sys.argv[2:]] or [1.0, 1.5, 2.0]:
        kept = [d for s, d in scored if s >= x]
        groups = [g for d in kept for g in d.groups]
        print(f"min layout {x}: {len(kept)} samples, words in branches {statistics.mean(dp(d) for d in kept):.2f}, "
              f"branches per group {statistics.mean(len(g.branches) for g in groups):.2f}")


if __name__ == "__main__":
    main()
