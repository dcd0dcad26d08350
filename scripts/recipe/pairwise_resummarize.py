"""Recompute the summary of `aspd bench pairwise` output files from their records (the verdict log-likelihoods are
stored), so that files written before a summary field existed (the debiased preference) gain it. No judge runs.

Usage: python scripts/recipe/pairwise_resummarize.py PAIRWISE.json [...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aspd.bench.pairwise import pairwise_summary


def main() -> None:
    for name in sys.argv[1:]:
        path = Path(name)
        data = json.loads(path.read_text(encoding="utf-8"))
        data["summary"] = pairwise_summary(data["records"])
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        d = data["summary"]["all"]["debiased"]
        print(f"{path}: model {d['model']} / baseline {d['baseline']} / even {d['even']}, "
              f"mean log-odds {d['mean_log_odds']:+.3f}, sign test p {d['sign_test_p']:.2f}")


if __name__ == "__main__":
    main()
