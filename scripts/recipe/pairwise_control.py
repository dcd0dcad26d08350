"""A control for the pairwise judge: can it tell an answer from the same answer cut in half?

Writes a results file whose rows are LABEL's answers and, as LABEL-half, the same answers cut after half of their
words (at a line or sentence end where there is one). `aspd bench pairwise --answers OUT --model LABEL --baseline
LABEL-half` should then prefer the whole answers in nearly every question, debiased; a judge that does not is no
evidence either way when it finds ASPD and Seq answers alike.

Usage: python scripts/recipe/pairwise_control.py RESULTS.json LABEL OUT.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def half(text: str) -> str:
    words = list(re.finditer(r"\S+", text))
    if len(words) < 2:
        return text
    cut = words[len(words) // 2 - 1].end()
    ends = [m.end() for m in re.finditer(r"[.!?:]\s|\n", text[:cut])]
    return text[: ends[-1] if ends and ends[-1] > cut // 2 else cut].rstrip()


def main() -> None:
    src, label, out = sys.argv[1:4]
    results = json.loads(Path(src).read_text(encoding="utf-8"))
    rows = [r for r in results["rows"] if r["label"] == label]
    if not rows:
        sys.exit(f"{src}: no answers labelled {label!r}")
    cut = [{**r, "label": f"{label}-half", "role": "baseline", "text": half(r["text"]), "markup": None} for r in rows]
    models = [{"label": label, "role": "model"}, {"label": f"{label}-half", "role": "baseline"}]
    Path(out).write_text(json.dumps({"config": {"models": models, "control_of": src}, "rows": rows + cut},
                                    ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{out}: {len(rows)} answers of {label} and their halves")


if __name__ == "__main__":
    main()
