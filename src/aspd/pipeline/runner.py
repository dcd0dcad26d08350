"""Run the pipeline over a JSONL file: read and check input lines, resume, append results durably, summarise.

Durability: each finished sample is one `write` of one JSON line, then flush + fsync, so a killed run
leaves at most a torn last line, which `--resume` cuts off before appending. Ids already in the output
are skipped, so a sample is never written twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aspd.jsonl import JsonlReader, RecordIds, line_id, read_appended, record_id
from aspd.pipeline.stages import StageConfig, process_sample
from aspd.pipeline.types import Judge, Rewriter, Sample
from aspd.records import RecordError, TransformOutput
from aspd.sample import record_messages

__all__ = ["InputError", "RunConfig", "output_lines", "read_output", "read_samples", "run_transform",
           "sample_from_record", "summarize", "transform"]

Report = Callable[[str], None]


class InputError(ValueError):
    """An input or output file the run cannot use (the message names the file and line)."""


def _stderr(message: str) -> None:
    print(f"aspd transform: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ input


def sample_from_record(obj: Any, lineno: int) -> Sample:
    """One input object as a Sample. Accepted: {id?, messages, answer?} (a final assistant turn is the
    answer when `answer` is absent) or {id?, question|prompt|instruction, context|input?, system?,
    history?: [{question, answer}], answer}, as `aspd train` reads them. No id: `line-N` (see RecordIds)."""
    if not isinstance(obj, dict):
        raise ValueError("line is not a JSON object")
    sid = record_id(obj)
    messages, last_turn = record_messages(obj)
    answer = obj.get("answer", last_turn)
    if last_turn is not None and answer != last_turn:
        raise ValueError("'messages' ends with an assistant turn that differs from 'answer'")
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError("needs a non-empty string 'answer' (the target model's own response)")
    return Sample(id=sid or line_id(lineno), messages=messages, answer=answer, record=obj)


@dataclass
class InputReport:
    samples: list[Sample]
    bad_lines: int = 0
    duplicates: int = 0


def read_samples(path: str | Path, *, strict: bool = False, report: Report = _stderr) -> InputReport:
    """Every usable sample; each bad line (a duplicate id among them) is reported as file:line, or with
    `strict` is an error. A file with no usable sample is an error."""
    reader = JsonlReader(path, skip_bad_lines=not strict, report=report, error=InputError)
    ids = RecordIds()
    result = InputReport([])
    lines: list[int] = []
    for lineno, obj in reader:
        try:
            sample = sample_from_record(obj, lineno)
        except ValueError as e:
            reader.bad(lineno, str(e))
            continue
        try:
            ids.add(obj, lineno)
        except ValueError as e:  # the id itself passed above: a duplicate
            result.duplicates += 1
            reader.bad(lineno, str(e))
            continue
        lines.append(lineno)
        result.samples.append(sample)
    if not result.samples:
        raise reader.empty()
    made_up = ids.made_up()
    for lineno, sample in zip(lines, result.samples, strict=True):
        sample.id = made_up.get(lineno, sample.id)
    result.bad_lines = reader.skipped
    return result


# ----------------------------------------------------------------------------------------------- output


def read_output(path: str | Path, *, repair: bool = False, report: Report = _stderr) -> list[dict[str, Any]]:
    """The records of an output file (see `TransformOutput`). A torn last line (a run killed mid-write) is
    dropped, and with `repair` cut off the file so appends start on a fresh line; a bad line elsewhere is an
    error."""
    return [rec for _, rec in output_lines(path, repair=repair, report=report)]


def output_lines(path: str | Path, *, repair: bool = False, report: Report = _stderr
                 ) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) per record of an output file; see `read_output`."""
    lines = read_appended(path, repair=repair, report=report, error=InputError)
    for lineno, obj in lines:
        try:
            TransformOutput.read(obj)
        except RecordError as e:
            raise InputError(f"{path}:{lineno}: not a valid output line ({e}); fix or remove it before resuming"
                             ) from None
    return lines


def _needs_retry(rec: dict[str, Any]) -> bool:
    failures = (rec.get("stats") or {}).get("failures") or {}
    return any(failures.get(k) for k in ("request_failed", "rewriter_error", "judge_error", "sample_error"))


def _rewrite_output(path: Path, records: list[dict[str, Any]]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------- running


@dataclass(frozen=True)
class RunConfig:
    stages: StageConfig = StageConfig()
    workers: int = 16  # samples in flight (requests in flight are the backend's own limit)
    resume: bool = False
    retry_failed: bool = False  # with resume: redo samples whose backend calls gave up
    strict: bool = False
    limit: int | None = None  # only the first `limit` usable input samples
    progress: bool = True


async def run_transform(input_path: str | Path, output_path: str | Path, rewriter: Rewriter, judge: Judge | None,
                        cfg: RunConfig = RunConfig(), *, report: Report = _stderr) -> dict[str, Any]:
    """Transform every sample not yet in the output; returns the summary (also written to OUT.summary.json)."""
    from tqdm import tqdm

    started = time.monotonic()
    out = Path(output_path)
    if Path(input_path).resolve() == out.resolve():
        raise InputError("--input and --output are the same file")
    inp = read_samples(input_path, strict=cfg.strict, report=report)
    samples = inp.samples[: cfg.limit] if cfg.limit is not None else inp.samples
    if not cfg.resume and out.exists() and out.stat().st_size > 0:
        raise InputError(f"{out} exists and is not empty: pass --resume to continue it, or choose another output")
    retried = 0
    done: set[str] = set()
    if cfg.resume:
        records = read_output(out, repair=True, report=report)
        if cfg.retry_failed:
            keep = [r for r in records if not _needs_retry(r)]
            retried = len(records) - len(keep)
            if retried:
                _rewrite_output(out, keep)
                report(f"retrying {retried} sample(s) whose backend calls failed")
            records = keep
        done = {str(r["id"]) for r in records}
    todo = [s for s in samples if s.id not in done]
    skipped = len(samples) - len(todo)
    out.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(samples), initial=skipped, unit="sample", disable=not cfg.progress or None,
               dynamic_ncols=True, desc="transform")
    made_parallel = 0
    processed = 0
    queue: asyncio.Queue[Sample] = asyncio.Queue()
    for s in todo:
        queue.put_nowait(s)

    with open(out, "a", encoding="utf-8") as f:

        def write(rec: dict[str, Any]) -> None:
            # One write per line, then fsync: what is on disk is whole lines plus at most one torn tail.
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

        async def worker() -> None:
            nonlocal made_parallel, processed
            while True:
                try:
                    sample = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                rec = await asyncio.create_task(process_sample(sample, rewriter, judge, cfg.stages))
                write(rec)
                processed += 1
                made_parallel += bool(rec["parallel"])
                bar.update(1)
                bar.set_postfix(parallel=made_parallel, refresh=False)

        try:
            await asyncio.gather(*(worker() for _ in range(max(1, min(cfg.workers, len(todo) or 1)))))
        finally:
            bar.close()
            for backend in {id(b): b for b in (rewriter, judge) if b is not None}.values():
                close = getattr(backend, "aclose", None)
                if close is not None:
                    await close()
    summary = summarize(out)
    summary["input"] = str(input_path)
    summary["this_run"] = {"processed": processed, "made_parallel": made_parallel, "already_done": skipped,
                           "retried": retried, "bad_input_lines": inp.bad_lines, "duplicate_ids": inp.duplicates,
                           "input_samples": len(samples), "seconds": round(time.monotonic() - started, 3)}
    summary["config"] = {"n": cfg.stages.n, "k": cfg.stages.k, "similarity": cfg.stages.similarity,
                         "rewriter": getattr(rewriter, "name", type(rewriter).__name__),
                         "judge": getattr(judge, "name", type(judge).__name__) if judge is not None else None}
    _write_json(Path(f"{out}.summary.json"), summary)
    return summary


def transform(input_path: str | Path, output_path: str | Path, rewriter: Rewriter, judge: Judge | None,
              cfg: RunConfig = RunConfig(), *, report: Report = _stderr) -> dict[str, Any]:
    return asyncio.run(run_transform(input_path, output_path, rewriter, judge, cfg, report=report))


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- summary


def summarize(output_path: str | Path) -> dict[str, Any]:
    """Totals over the whole output file (so they stay right across resumed runs)."""
    records = read_output(output_path, report=lambda _: None)
    stage_keys = ("candidates", "passed_checks", "passed_independence", "passed_integrity", "passed_answer")
    stages: Counter[str] = Counter()
    drops: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    llm: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    words: Counter[str] = Counter()
    parallel = 0
    parallel_dps: list[float] = []
    checks: dict[str, Counter[str]] = {}
    sources: dict[str, Counter[str]] = {}
    for rec in records:
        st = rec.get("stats") or {}
        parallel += bool(rec.get("parallel"))
        if rec.get("parallel"):
            parallel_dps.append(float(st.get("dp", 0.0)))
        for c in rec.get("candidates") or []:
            for name, result in (c.get("checks") or {}).items():
                checks.setdefault(name, Counter()).update(ran=1, passed=int(bool(result.get("ok"))))
            per = sources.setdefault(str(c.get("source", "?")), Counter())
            per.update(candidates=1, selected=int(c.get("verdict") == "selected"))
            per.update(f"passed_{stage}" for stage in c.get("reached") or [])
        for k in stage_keys:
            stages[k] += int(st.get(k, 0))
        drops.update(st.get("drops") or {})
        failures.update(st.get("failures") or {})
        skipped.update(st.get("skipped_stages") or [])
        for k in ("llm_calls", "cache_hits", "prompt_tokens", "completion_tokens"):
            llm[k] += int(st.get(k, 0))
        for k in ("groups", "branches", "serial_words", "parallel_words", "groups_proposed"):
            words[k] += int(st.get(k, 0))
    n = len(records)
    total_words = words["serial_words"] + words["parallel_words"]
    return {
        "output": str(output_path),
        "samples": n,
        "parallel_samples": parallel,
        "serial_samples": n - parallel,
        "acceptance": {"candidates_in": stages["candidates"], "passed_checks": stages["passed_checks"],
                       "passed_independence": stages["passed_independence"],
                       "passed_integrity": stages["passed_integrity"], "passed_answer": stages["passed_answer"]},
        "drops": dict(drops),
        "stages_skipped_in_samples": dict(skipped),
        "groups": {"proposed": words["groups_proposed"], "in_output": words["groups"],
                   "branches_in_output": words["branches"]},
        # Before = the serial inputs (no groups); after = the output, DP weighted by words over all samples.
        "ppd": {"before": 0.0, "after": parallel / n if n else 0.0},
        "dp": {"before": 0.0, "after": words["parallel_words"] / total_words if total_words else 0.0,
               "parallel_samples_mean": sum(parallel_dps) / len(parallel_dps) if parallel_dps else 0.0},
        "abn": {"before": 0.0, "after": words["branches"] / words["groups"] if words["groups"] else 0.0},
        "llm": {"calls": llm["llm_calls"], "cache_hits": llm["cache_hits"], "prompt_tokens": llm["prompt_tokens"],
                "completion_tokens": llm["completion_tokens"],
                "total_tokens": llm["prompt_tokens"] + llm["completion_tokens"]},
        "failures": dict(failures),
        # Each deterministic check: candidates that reached it, and those that passed it.
        "checks": {name: {"ran": c["ran"], "passed": c["passed"]} for name, c in checks.items()},
        # Per candidate source ("rules:outer", "spans", "openai:M", ...): candidates, stages passed, selected.
        "by_source": {src: {k: c[k] for k in ("candidates", "passed_checks", "passed_independence",
                                                "passed_integrity", "passed_answer", "selected")}
                      for src, c in sorted(sources.items())},
    }


def format_summary(s: dict[str, Any]) -> str:
    a = s["acceptance"]
    lines = [
        f"samples: {s['samples']} ({s['parallel_samples']} parallel, {s['serial_samples']} kept serial)",
        f"candidates: {a['candidates_in']} in -> {a['passed_checks']} passed checks -> "
        f"{a['passed_independence']} independence -> {a['passed_integrity']} integrity -> "
        f"{a['passed_answer']} answer",
        f"PPD {s['ppd']['before']:.3f} -> {s['ppd']['after']:.3f}   DP {s['dp']['before']:.3f} -> "
        f"{s['dp']['after']:.3f}   ABN {s['abn']['before']:.2f} -> {s['abn']['after']:.2f}",
        f"LLM calls: {s['llm']['calls']} (cache hits {s['llm']['cache_hits']}), tokens: "
        f"{s['llm']['prompt_tokens']} prompt + {s['llm']['completion_tokens']} completion",
    ]
    if s.get("checks"):
        lines.append("checks passed: " + ", ".join(f"{k} {v['passed']}/{v['ran']}" for k, v in s["checks"].items()))
    for src, c in (s.get("by_source") or {}).items():
        lines.append(f"  {src}: {c['candidates']} candidates, {c['passed_checks']} passed checks, "
                     f"{c['passed_independence']} independence, {c['selected']} selected")
    if s["parallel_samples"]:
        lines.append(f"mean DP of the parallel samples: {s['dp']['parallel_samples_mean']:.3f}")
    if s["failures"]:
        lines.append("failures: " + ", ".join(f"{k} {v}" for k, v in sorted(s["failures"].items())))
    if s["drops"]:
        lines.append("candidate drops: " + ", ".join(f"{k} {v}" for k, v in sorted(s["drops"].items())))
    if s["stages_skipped_in_samples"]:
        lines.append("stages skipped: " + ", ".join(f"{k} ({v} samples)" for k, v in
                                                     sorted(s["stages_skipped_in_samples"].items())))
    run = s.get("this_run")
    if run:
        lines.append(f"this run: {run['processed']} processed, {run['already_done']} already done, "
                     f"{run['bad_input_lines']} bad input lines, {run['seconds']:.1f}s")
    return "\n".join(lines)
