"""The four stages for one sample (DESIGN.md section 5): rewrite, deterministic checks + independence votes,
integrity and answer votes, selection. `process_sample` never raises for a sample's content or a backend's
failure: a sample it cannot make parallel comes back with its original answer as serial data.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aspd.bench.metrics import abn, dp, parallel_stats
from aspd.markup import (
    Document,
    Group,
    MarkupError,
    Segment,
    Serial,
    flatten,
    parse,
    render,
    same_text,
    similarity,
)
from aspd.pipeline.backends import CallLog, use_log
from aspd.pipeline.parsing import parse_rewrite
from aspd.pipeline.rules import marker_problems
from aspd.pipeline.types import Candidate, Judge, Rewriter, Sample, Vote

__all__ = ["Checked", "StageConfig", "check_candidate", "majority", "process_sample", "revert_groups",
           "select", "text_before"]


@dataclass(frozen=True)
class StageConfig:
    n: int = 3  # candidates per sample
    k: int = 3  # votes per judgement
    similarity: float = 0.98  # flattened candidate vs original answer (aspd.markup.similarity); 1.0 = exact words


# ------------------------------------------------------------------------------------ deterministic checks


@dataclass
class Checked:
    doc: Document | None  # the parsed candidate when every check passed
    checks: dict[str, dict[str, Any]]  # name -> {"ok": bool, "detail": str}, in the order they ran
    drop: str | None = None  # short drop reason (a key of the run's `drops` counter), None when it passed
    reason: str = ""
    parse_error: str | None = None
    similarity: float | None = None


def check_candidate(c: Candidate, answer: str, threshold: float = 0.98) -> Checked:
    """Cheap checks before any vote: reply format, strict parse, >= 1 group, >= 2 branches per group,
    unique titles, list markers (no branch body starts with one; numbered heads consecutive: see
    `aspd.pipeline.rules.marker_problems`), flattened text equal to the answer (up to whitespace, or
    similarity >= threshold)."""
    checks: dict[str, dict[str, Any]] = {}

    def fail(name: str, drop: str, detail: str, **extra: Any) -> Checked:
        checks[name] = {"ok": False, "detail": detail}
        return Checked(None, checks, drop, f"{name}: {detail}", **extra)

    if c.has_parallel is False:
        detail = "the rewriter found no parallel content"
        if c.markup and "<branchgroup" in c.markup:
            detail = "the reply says PARALLEL: no but marks groups (contradiction)"
            return fail("reply", "reply_format", detail)
        return fail("reply", "no_parallel", detail)
    if c.has_parallel is None or c.markup is None:
        problems = list(c.problems) or parse_rewrite(c.raw, answer).problems
        detail = "; ".join(problems) or ("no marked-up answer" if c.markup is None else
                                         "the reply does not say whether parallel content exists")
        return fail("reply", "reply_format", detail)
    checks["reply"] = {"ok": True, "detail": ""}
    try:
        doc = parse(c.markup)
    except MarkupError as e:
        # Unbalanced tags, nesting, groups of one branch, duplicate or empty titles all land here.
        return fail("parse", "markup", str(e), parse_error=str(e))
    checks["parse"] = {"ok": True, "detail": ""}
    groups = doc.groups
    if not groups:
        return fail("groups", "no_group", "the marked-up answer has no <branchgroup>")
    checks["groups"] = {"ok": True, "detail": f"{len(groups)} group(s)"}
    small = [i for i, g in enumerate(groups) if len(g.branches) < 2]
    if small:
        return fail("branches", "markup", f"group(s) {small} have fewer than 2 branches")
    checks["branches"] = {"ok": True, "detail": f"{[len(g.branches) for g in groups]}"}
    dup = [i for i, g in enumerate(groups) if len(set(g.titles)) != len(g.titles)]
    if dup:
        return fail("titles", "markup", f"group(s) {dup} repeat a title")
    checks["titles"] = {"ok": True, "detail": ""}
    wrong = [f"group {i + 1}: {p}" for i, g in enumerate(groups) for p in marker_problems(g)]
    if wrong:
        return fail("markers", "markers", "; ".join(wrong))
    checks["markers"] = {"ok": True, "detail": ""}
    flat = flatten(doc)
    if same_text(flat, answer):
        sim = 1.0
    else:
        sim = similarity(flat, answer)
        if sim < threshold:
            return fail("content", "content", f"flattened text differs from the answer (similarity {sim:.4f} < "
                        f"{threshold:g})", similarity=sim)
    checks["content"] = {"ok": True, "detail": f"similarity {sim:.4f}"}
    return Checked(doc, checks, similarity=sim)


# ---------------------------------------------------------------------------------------- votes, reverting


def majority(votes: list[Vote]) -> bool:
    """More than half of the votes say True; unparseable votes (None) count against."""
    return bool(votes) and sum(v.verdict is True for v in votes) * 2 > len(votes)


def text_before(doc: Document, group_index: int) -> str:
    """The answer text (flattened) before the group_index-th group: what its branches get to see."""
    seen = -1
    for i, seg in enumerate(doc.segments):
        if isinstance(seg, Group):
            seen += 1
            if seen == group_index:
                return flatten(Document(doc.segments[:i]))
    raise IndexError(f"document has no group {group_index}")


def revert_groups(doc: Document, keep: list[bool]) -> Document:
    """Turn the groups whose `keep` is False into serial text (their branch bodies in order).

    Joins pieces with "\\n" exactly as `flatten` does, so flatten(result) == flatten(doc); merging with the
    neighbouring serial text by plain concatenation (`Document.normalized`) would glue lines together.
    """
    groups = doc.groups
    if len(keep) != len(groups):
        raise ValueError(f"keep has {len(keep)} flags for {len(groups)} groups")
    out: list[Segment] = []
    pending: list[str] = []
    gi = 0
    for seg in doc.normalized().segments:
        if isinstance(seg, Serial):
            pending.append(seg.text)
            continue
        if keep[gi]:
            if pending:
                out.append(Serial("\n".join(pending)))
                pending = []
            out.append(seg)
        else:
            pending.extend(v for b in seg.branches if (v := b.visible))
        gi += 1
    if pending:
        out.append(Serial("\n".join(pending)))
    return Document(tuple(out))


def select(docs: list[Document | None]) -> int | None:
    """Index of the best surviving candidate: highest DP, then highest mean branch count; first on ties."""
    best: tuple[float, float] | None = None
    pick = None
    for i, d in enumerate(docs):
        if d is None:
            continue
        score = (dp(d), abn([d]))
        if best is None or score > best:
            best, pick = score, i
    return pick


def _votes_json(votes: list[Vote]) -> list[dict[str, Any]]:
    return [{"verdict": v.verdict, "reason": v.reason, "raw": v.raw} for v in votes]


# -------------------------------------------------------------------------------------------- one sample


@dataclass
class _Outcome:
    """One candidate's path through the stages, written out as-is in the sample's `candidates`."""

    index: int
    out: dict[str, Any]
    doc: Document | None = None  # set while the candidate survives
    reached: list[str] = field(default_factory=list)  # stages passed


class _Skip(Exception):
    """A judge cannot do this kind of vote (NotImplementedError): the stage is skipped."""


async def _ask(log: CallLog, kind: str, call: Callable[[], Awaitable[list[Vote]]], k: int) -> list[Vote]:
    try:
        votes = list(await call())  # called in here: a judge may also raise before its first await
    except NotImplementedError as e:
        raise _Skip(str(e) or f"the judge does not implement {kind} votes") from None
    except Exception as e:  # a judge bug or an unexpected backend error: these votes fail, the run goes on
        log.fail("judge_error", f"{kind}: {type(e).__name__}: {e}")
        return [Vote(None, f"judge error: {type(e).__name__}: {e}")] * max(k, 1)
    for v in votes:
        if v.verdict is None and v.raw:
            log.fail("unparseable_reply", f"{kind} vote: {v.reason}")
    return votes


async def _independence(o: _Outcome, sample: Sample, judge: Judge | None, k: int, log: CallLog,
                        skipped: set[str]) -> None:
    doc = o.doc
    assert doc is not None
    if judge is None:
        skipped.add("independence")
        o.out["independence"] = {"skipped": "no judge"}
        o.reached.append("independence")
        return
    groups = doc.groups
    results = await asyncio.gather(
        *(_ask(log, "independence", partial(judge.independence, sample, text_before(doc, i), g, k), k)
          for i, g in enumerate(groups)),
        return_exceptions=True,
    )
    skip = next((r for r in results if isinstance(r, _Skip)), None)
    if skip is not None:
        skipped.add("independence")
        o.out["independence"] = {"skipped": str(skip)}
        o.reached.append("independence")
        return
    keep: list[bool] = []
    report = []
    for g, votes in zip(groups, results, strict=True):
        if isinstance(votes, BaseException):
            raise votes
        ok = majority(votes)
        keep.append(ok)
        report.append({"titles": list(g.titles), "votes": _votes_json(votes),
                       "yes": sum(v.verdict is True for v in votes), "kept": ok})
    o.out["independence"] = {"groups": report, "kept": sum(keep), "reverted": len(keep) - sum(keep)}
    if not any(keep):
        o.doc = None
        o.out.update(stage="independence", reason=f"all {len(keep)} group(s) failed the independence vote")
        o.out["drop"] = "independence"
        return
    o.doc = revert_groups(doc, keep)
    o.reached.append("independence")


async def _compare(kind: str, o: _Outcome, sample: Sample, judge: Judge | None, k: int, log: CallLog,
                   skipped: set[str]) -> None:
    doc = o.doc
    assert doc is not None
    if judge is None:
        skipped.add(kind)
        o.out[kind] = {"skipped": "no judge"}
        o.reached.append(kind)
        return
    call = partial(judge.integrity if kind == "integrity" else judge.answer, sample, doc, k)
    try:
        votes = await _ask(log, kind, call, k)
    except _Skip as e:
        skipped.add(kind)
        o.out[kind] = {"skipped": str(e)}
        o.reached.append(kind)
        return
    ok = majority(votes)
    o.out[kind] = {"votes": _votes_json(votes), "yes": sum(v.verdict is True for v in votes), "passed": ok}
    if not ok:
        o.doc = None
        o.out.update(stage=kind, reason=f"no majority for 'true' in the {kind} vote", drop=kind)
        return
    o.reached.append(kind)


async def _evaluate(o: _Outcome, c: Candidate, sample: Sample, judge: Judge | None, cfg: StageConfig,
                    log: CallLog, skipped: set[str]) -> None:
    checked = check_candidate(c, sample.answer, cfg.similarity)
    o.out.update(checks=checked.checks, parse_error=checked.parse_error, similarity=checked.similarity)
    if checked.doc is None:
        o.out.update(stage="checks", reason=checked.reason, drop=checked.drop)
        if checked.drop == "reply_format":
            log.fail("unparseable_reply", f"rewrite reply {o.index}: {checked.reason}")
        elif checked.drop == "markup":
            log.fail("markup_error", f"rewrite reply {o.index}: {checked.reason}")
        return
    o.doc = checked.doc
    o.reached.append("checks")
    o.out["groups_proposed"] = len(checked.doc.groups)
    await _independence(o, sample, judge, cfg.k, log, skipped)
    for kind in ("integrity", "answer"):
        if o.doc is None:
            return
        await _compare(kind, o, sample, judge, cfg.k, log, skipped)


async def process_sample(sample: Sample, rewriter: Rewriter, judge: Judge | None,
                         cfg: StageConfig = StageConfig()) -> dict[str, Any]:
    """The output record of one sample: the input fields plus markup, parallel, candidates, stats."""
    log = CallLog()
    use_log(log)  # backends report their calls here (this task and the tasks it starts only)
    start = time.monotonic()
    skipped: set[str] = set()
    outcomes: list[_Outcome] = []
    try:
        try:
            candidates = list(await rewriter.rewrite(sample, cfg.n))
        except Exception as e:
            log.fail("rewriter_error", f"{type(e).__name__}: {e}")
            candidates = []
        outcomes = [_Outcome(i, {"index": i, "source": c.source, "raw": c.raw, "has_parallel": c.has_parallel})
                    for i, c in enumerate(candidates)]
        await asyncio.gather(*(_evaluate(o, c, sample, judge, cfg, log, skipped)
                               for o, c in zip(outcomes, candidates, strict=True)))
        pick = select([o.doc for o in outcomes])
        error = None
    except Exception as e:  # a bug must cost one sample's parallel version, never the sample
        log.fail("sample_error", f"{type(e).__name__}: {e}")
        pick, error = None, f"{type(e).__name__}: {e}"
        for o in outcomes:
            o.doc = None
            o.out.setdefault("reason", f"not finished: {error}")
    for o in outcomes:
        o.out["reached"] = list(o.reached)  # stages passed, for the per-rewriter counts of the summary
        if o.doc is not None:
            o.out.update(markup=render(o.doc), dp=dp(o.doc), abn=abn([o.doc]))
            o.out.update(verdict="selected" if o.index == pick else "passed",
                         stage="selection", reason="highest DP, then ABN" if o.index == pick else
                         "passed every stage; another candidate has a higher DP/ABN")
        else:
            o.out.setdefault("stage", "checks")
            o.out["verdict"] = "dropped"
    chosen = outcomes[pick].doc if pick is not None else None
    if chosen is not None:
        markup, outcome = render(chosen), "parallel"
    else:
        markup = sample.answer  # the original answer, untouched: never lose a sample
        if error:
            outcome = f"serial: internal error ({error})"
        elif not outcomes:
            outcome = "serial: no rewrite reply" + (" (backend failures; see stats.errors)" if log.failures else "")
        else:
            drops = Counter(o.out.get("drop", "?") for o in outcomes)
            outcome = "serial: no candidate survived (" + ", ".join(f"{k}: {v}" for k, v in drops.items()) + ")"
    final = chosen or Document((Serial(sample.answer),))
    ps = parallel_stats(final)

    def count(stage: str) -> int:
        return sum(stage in o.reached for o in outcomes)

    stats = {
        "outcome": outcome,
        "candidates": len(outcomes),
        "passed_checks": count("checks"),
        "passed_independence": count("independence"),
        "passed_integrity": count("integrity"),
        "passed_answer": count("answer"),
        "drops": dict(Counter(o.out["drop"] for o in outcomes if o.out.get("drop"))),
        "groups_proposed": sum(o.out.get("groups_proposed", 0) for o in outcomes),
        "skipped_stages": sorted(skipped),
        "groups": ps.groups,
        "branches": ps.branches,
        "serial_words": ps.serial_tokens,
        "parallel_words": ps.parallel_tokens,
        "dp": dp(final),
        "abn": abn([final]),
        **log.to_dict(),
        "seconds": round(time.monotonic() - start, 3),
    }
    out = {**sample.record, "id": sample.record.get("id", sample.id), "markup": markup,
           "parallel": chosen is not None, "candidates": [o.out for o in outcomes], "stats": stats}
    if error:
        out["error"] = error
    return out
