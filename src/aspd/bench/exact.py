"""Judge-free exact-match accuracy on checkable question sets (GSM8K-style final numbers).

Gold: JSONL, one {"question": ..., "answer": "... #### 42"} per line; the gold value is the number after the
last '####'. Question ids follow `aspd.bench.data` (question_id, else id, else the line number), so a GSM8K file
answered by `aspd bench speed --bench gsm8k.jsonl` lines up with its own rows. The prediction is the last number
in the model's answer (commas as thousands separators allowed, e.g. "$1,234.50" -> 1234.5); both compare
numerically (|a - b| <= 1e-6). Only first-turn rows are scored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aspd.bench.data import BenchDataError, read_jsonl

_NUM = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+")
TOLERANCE = 1e-6


def extract_number(text: str | None) -> float | None:
    """The last number in `text`, or None if there is none."""
    found = _NUM.findall(text or "")
    if not found:
        return None
    return float(found[-1].replace(",", ""))


def gold_number(answer: str) -> float | None:
    """The number after the last '####' of a GSM8K answer, or None if there is no such number."""
    if "####" not in answer:
        return None
    tail = answer.rsplit("####", 1)[1].strip()
    m = _NUM.match(tail.lstrip("$ "))
    return float(m.group(0).replace(",", "")) if m else None


def load_gold(path: str | Path) -> dict[str, float]:
    """question id -> gold number; raises BenchDataError naming the file and line of any bad record."""
    p = Path(path)
    out: dict[str, float] = {}
    for n, obj in read_jsonl(p):
        if not isinstance(obj, dict) or not isinstance(obj.get("answer"), str):
            raise BenchDataError(f"{p}:{n}: needs an 'answer' string")
        value = gold_number(obj["answer"])
        if value is None:
            raise BenchDataError(f"{p}:{n}: no number after '####' in the answer")
        out[str(obj.get("question_id", obj.get("id", n)))] = value
    if not out:
        raise BenchDataError(f"{p}: no gold answers")
    return out


def score_exact(rows: Sequence[dict[str, Any]], gold: dict[str, float]) -> list[dict[str, Any]]:
    """Per first-turn row with a gold answer: {id, label, gold, predicted, correct}."""
    out = []
    for r in rows:
        if int(r.get("turn", 1)) != 1 or str(r["id"]) not in gold:
            continue
        g, pred = gold[str(r["id"])], extract_number(r.get("text"))
        out.append({"id": r["id"], "label": r["label"], "gold": g, "predicted": pred,
                    "correct": pred is not None and abs(pred - g) <= TOLERANCE})
    return out


def exact_summary(scored: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """label -> {accuracy, correct, total, no_number}."""
    out: dict[str, Any] = {}
    for label in dict.fromkeys(r["label"] for r in scored):
        mine = [r for r in scored if r["label"] == label]
        correct = sum(r["correct"] for r in mine)
        out[label] = {"accuracy": round(correct / len(mine), 4), "correct": correct, "total": len(mine),
                      "no_number": sum(r["predicted"] is None for r in mine)}
    return out


def exact_table(summary: dict[str, Any]) -> str:
    lines = ["| model | accuracy | correct | total | no number |", "|---|---:|---:|---:|---:|"]
    for lab, s in summary.items():
        lines.append(f"| {lab} | {s['accuracy']:.3f} | {s['correct']} | {s['total']} | {s['no_number']} |")
    return "\n".join(lines)
