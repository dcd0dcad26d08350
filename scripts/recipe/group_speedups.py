"""Median speedup of a hybrid model over its serial baseline (and its mean DP), split by whether the hybrid answer
opened a group.

Usage: python scripts/recipe/group_speedups.py RESULTS_JSON [--max-question N] [--pair MODEL BASELINE]
Reads an `aspd bench speed` results.json with one hybrid and one serial spec (or, with --pair, the two labels of a
run that holds several pairs); per question the speedup is the TPS ratio, as in the bench report. --max-question
keeps questions 1..N (to compare runs over a shared range).
"""

from __future__ import annotations

import argparse
import json
import statistics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--max-question", type=int, default=None)
    ap.add_argument("--pair", nargs=2, default=None, metavar=("MODEL", "BASELINE"))
    args = ap.parse_args()
    rows = json.loads(open(args.results, encoding="utf-8").read())["rows"]
    if args.pair:
        rows = [r for r in rows if r["label"] in args.pair]
    pairs: dict[tuple[str, int], dict[str, dict]] = {}
    for r in rows:
        if args.max_question is None or int(r["id"]) <= args.max_question:
            pairs.setdefault((r["id"], r["turn"]), {})[r["mode"]] = r
    out = {}
    for name, keep in (("all", lambda h: True), ("with_groups", lambda h: h["groups"] > 0),
                       ("without_groups", lambda h: h["groups"] == 0)):
        kept = [p for p in pairs.values()
                if "hybrid" in p and "serial" in p and p["serial"]["tps"] and keep(p["hybrid"])]
        s = [p["hybrid"]["tps"] / p["serial"]["tps"] for p in kept]
        if s:
            q = statistics.quantiles(s, n=4) if len(s) > 1 else [s[0]] * 3
            out[name] = {"answers": len(s), "median": round(statistics.median(s), 3),
                         "p25": round(q[0], 2), "p75": round(q[2], 2),
                         "dp_mean": round(statistics.mean(p["hybrid"]["dp"] for p in kept), 3)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
