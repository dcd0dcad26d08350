"""Markdown report of an `aspd transform` run: the summary's figures and example outputs.

Usage: python scripts/recipe/transform_report.py OUT.jsonl REPORT.md [--examples 10] [--title T] [--command C]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aspd.jsonl import iter_jsonl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("output")
    ap.add_argument("report")
    ap.add_argument("--examples", type=int, default=10)
    ap.add_argument("--title", default="Transform run")
    ap.add_argument("--command", default="")
    args = ap.parse_args()
    summary = json.loads(Path(f"{args.output}.summary.json").read_text())
    rows = [obj for _, obj in iter_jsonl(args.output)]
    lines = [f"# {args.title}", ""]
    if args.command:
        lines += ["Command:", "", "```", args.command, "```", ""]
    lines += ["## Summary", "", "```json", json.dumps(summary, indent=1), "```", "", "## Examples", ""]
    shown = [r for r in rows if r.get("parallel")][: args.examples]
    shown += [r for r in rows if not r.get("parallel")][: max(0, args.examples - len(shown))]
    for r in shown:
        q = r.get("prompt") or r.get("question") or ""
        lines += [f"### {r['id']} ({'parallel' if r.get('parallel') else 'kept serial'})", "",
                  f"**Prompt:** {q[:300]}", "", "```", r["markup"][:2500], "```", ""]
    Path(args.report).write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
