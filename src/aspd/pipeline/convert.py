"""Pipeline output -> training files for `aspd train`: the ASPD variant (answers with markup) and the Seq
variant (the same answers flattened), one `{id, messages, answer}` object per line.

Both files get the same samples in the same order, so an ASPD model and its Seq baseline are trained on
exactly the same text; a record whose markup cannot be read is reported and left out of both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from aspd.markup import MarkupError, flatten, parse
from aspd.pipeline.runner import InputError, Report, _stderr, output_lines, sample_from_record

__all__ = ["convert", "training_records"]

_Pair = tuple[dict[str, Any], dict[str, Any], bool]  # (ASPD record, Seq record, made parallel)


def training_records(rec: dict[str, Any], lineno: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ASPD record, Seq record) of one pipeline output record; ValueError if it cannot be used."""
    sample = sample_from_record(rec, lineno)
    markup = rec.get("markup", sample.answer)
    if not isinstance(markup, str) or not markup.strip():
        raise ValueError("'markup' must be a non-empty string")
    try:
        doc = parse(markup)
    except MarkupError as e:
        # Happens when a kept-serial answer itself contains text that reads as markup tags.
        raise ValueError(f"markup does not parse ({e})") from None
    base = {"id": rec.get("id", sample.id), "messages": sample.messages}
    return {**base, "answer": markup}, {**base, "answer": flatten(doc)}


def convert(output_path: str | Path, aspd_path: str | Path | None = None, seq_path: str | Path | None = None,
            *, parallel_only: bool = False, serial_share: float | None = None,
            report: Report = _stderr) -> dict[str, int]:
    """Write the training file(s); returns counts {records, written, parallel, skipped}.

    `serial_share` caps the share of kept-serial samples: all parallel samples stay, and serial ones, spread
    evenly over the file, are added until they make up that share (0 is the same as `parallel_only`).
    """
    if serial_share is not None and not 0.0 <= serial_share < 1.0:
        raise InputError("serial share must be in [0, 1)")
    if aspd_path is None and seq_path is None:
        raise InputError("nothing to write: give --aspd and/or --seq")
    if not Path(output_path).exists():
        raise InputError(f"cannot read {output_path}: no such file")
    records = output_lines(output_path, report=report)
    counts = {"records": len(records), "written": 0, "parallel": 0, "skipped": 0}
    pairs: list[_Pair] = []
    for i, rec in records:
        if parallel_only and not rec.get("parallel"):
            continue
        try:
            pairs.append((*training_records(rec, i), bool(rec.get("parallel"))))
        except ValueError as e:
            counts["skipped"] += 1
            report(f"skipping {output_path}:{i} (id {rec.get('id')!r}): {e}")
            continue
        counts["parallel"] += bool(rec.get("parallel"))
    if serial_share is not None:
        pairs = _cap_serial(pairs, serial_share)
    for path, which in ((aspd_path, 0), (seq_path, 1)):
        if path is None:
            continue
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for pair in pairs:
                f.write(json.dumps(pair[which], ensure_ascii=False) + "\n")
        os.replace(tmp, p)  # never leave a half-written training file behind
    counts["written"] = len(pairs)
    return counts


def _cap_serial(pairs: list[_Pair], share: float) -> list[_Pair]:
    """Keep every parallel pair and an evenly spaced subset of serial ones (order preserved)."""
    serial = [i for i, p in enumerate(pairs) if not p[2]]
    want = min(len(serial), int(share / (1.0 - share) * (len(pairs) - len(serial))))
    keep = {serial[j * len(serial) // want] for j in range(want)} if want else set()
    return [p for i, p in enumerate(pairs) if p[2] or i in keep]
