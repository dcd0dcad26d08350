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

from aspd.markup import Document, Group, MarkupError, flatten, parse
from aspd.pipeline.runner import InputError, Report, _stderr, output_lines, sample_from_record

__all__ = ["convert", "layout_speedup", "training_records"]

_Pair = tuple[dict[str, Any], dict[str, Any], bool]  # (ASPD record, Seq record, made parallel)


def training_records(rec: dict[str, Any], lineno: int, *, min_layout_speedup: float | None = None
                     ) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """(ASPD record, Seq record, flattened) of one pipeline output record; ValueError if it cannot be used.
    A layout that allows less than `min_layout_speedup` is written flattened in the ASPD record too."""
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
    flat = flatten(doc)
    if doc.groups and min_layout_speedup and layout_speedup(doc) < min_layout_speedup:
        return {**base, "answer": flat}, {**base, "answer": flat}, True
    return {**base, "answer": markup}, {**base, "answer": flat}, False


def layout_speedup(doc: Document) -> float:
    """Words of the answer over the steps its layout needs, one word a step and a group as long as its longest
    branch: the most its structure can speed decoding up (1.0 for a serial answer)."""
    words = steps = 0
    for seg in doc.segments:
        if isinstance(seg, Group):
            lengths = [len(b.visible.split()) for b in seg.branches]
            words += sum(lengths)
            steps += max(lengths, default=0)
        else:
            n = len(seg.text.split())
            words += n
            steps += n
    return words / steps if steps else 1.0


def convert(output_path: str | Path, aspd_path: str | Path | None = None, seq_path: str | Path | None = None,
            *, parallel_only: bool = False, serial_share: float | None = None,
            min_layout_speedup: float | None = None, report: Report = _stderr) -> dict[str, int]:
    """Write the training file(s); returns counts {records, written, parallel, skipped, flattened}.

    `min_layout_speedup` writes parallel samples whose structure would save too little (`layout_speedup` below
    it: a short group in a long answer, or one branch much longer than the others) in serial form instead, so
    the ASPD model learns the layouts that pay. `serial_share` caps the share of serial samples: all parallel
    samples stay, and serial ones, spread evenly over the file, are added until they make up that share (0 is
    the same as `parallel_only`).
    """
    if serial_share is not None and not 0.0 <= serial_share < 1.0:
        raise InputError("serial share must be in [0, 1)")
    if aspd_path is None and seq_path is None:
        raise InputError("nothing to write: give --aspd and/or --seq")
    if not Path(output_path).exists():
        raise InputError(f"cannot read {output_path}: no such file")
    records = output_lines(output_path, report=report)
    if min_layout_speedup is not None and not min_layout_speedup >= 1.0:
        raise InputError("minimum layout speedup must be at least 1")
    counts = {"records": len(records), "written": 0, "parallel": 0, "skipped": 0, "flattened": 0}
    pairs: list[_Pair] = []
    for i, rec in records:
        parallel = bool(rec.get("parallel"))
        if parallel_only and not parallel:
            continue
        try:
            aspd_rec, seq_rec, flattened = training_records(
                rec, i, min_layout_speedup=min_layout_speedup if parallel else None)
        except ValueError as e:
            counts["skipped"] += 1
            report(f"skipping {output_path}:{i} (id {rec.get('id')!r}): {e}")
            continue
        if flattened:
            counts["flattened"] += 1
            if parallel_only:
                continue
            parallel = False
        pairs.append((aspd_rec, seq_rec, parallel))
        counts["parallel"] += parallel
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
