"""Strict readers of the rewrite and judge replies (protocol in prompts.py).

Strict about what carries meaning (one status line, one answer block, a true/false verdict), tolerant of
what does not: surrounding whitespace, letter case, Markdown emphasis on the field names, code fences
around the whole reply or around the answer block, chatter outside the block. Each reader says what was
wrong instead of guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from aspd.pipeline.types import Candidate, Vote

__all__ = ["RewriteReply", "parse_rewrite", "parse_verdict", "to_candidate"]

_START = re.compile(r"<<<[ \t]*ANSWER\b[ \t]*", re.IGNORECASE)
_END = re.compile(r"[ \t]*\bANSWER[ \t]*>>>", re.IGNORECASE)
# `PARALLEL: yes`, `**Parallel:** No.`, `- parallel = yes`, `PARALLEL: "yes"`
_STATUS = re.compile(r"^[\s>*_`#-]*parallel[\s*_`]*[:=][\s*_`\"']*([A-Za-z]+)[\s*_`\"'.!]*$", re.IGNORECASE | re.MULTILINE)
_VERDICT = re.compile(r"^[\s>*_`#-]*verdict[\s*_`]*[:=][\s*_`\"']*(\S+?)[\s*_`\"'.!]*$", re.IGNORECASE | re.MULTILINE)
_REASON = re.compile(r"^[\s>*_`#-]*reason[\s*_`]*[:=][\s*_`]*(.*)$", re.IGNORECASE | re.MULTILINE)
_FENCE_LINE = re.compile(r"^[ \t]*(```|~~~)[^\n]*$")
# Reasoning models may put their thinking before the reply; it can quote the protocol's field names.
_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_YES = {"yes", "true", "y"}
_NO = {"no", "false", "n"}


@dataclass
class RewriteReply:
    has_parallel: bool | None
    markup: str | None
    problems: list[str] = field(default_factory=list)  # empty: the reply follows the protocol


def _unfence(text: str) -> str | None:
    """The inside of a text that is one fenced block (```lang ... ```), else None."""
    lines = text.strip("\n").split("\n")
    if len(lines) >= 2 and _FENCE_LINE.match(lines[0]) and lines[-1].strip() in ("```", "~~~"):
        return "\n".join(lines[1:-1])
    return None


def parse_rewrite(raw: str, original: str | None = None) -> RewriteReply:
    """Read a rewrite reply. `original` (the serial answer) tells a fence the rewriter added around the
    block apart from a code block the answer itself starts with."""
    problems: list[str] = []
    raw = _THINK.sub("", raw, count=1)
    starts = list(_START.finditer(raw))
    ends = list(_END.finditer(raw))
    markup: str | None = None
    outside = raw
    if len(starts) > 1:
        problems.append(f"{len(starts)} '<<<ANSWER' markers (expected one)")
    elif len(ends) > 1:
        problems.append(f"{len(ends)} 'ANSWER>>>' markers (expected one)")
    elif starts and not ends:
        problems.append("answer block not closed: no 'ANSWER>>>' marker")
    elif ends and not starts:
        problems.append("answer block not opened: no '<<<ANSWER' marker")
    elif starts and ends:
        s, e = starts[0], ends[0]
        if e.start() < s.end():
            problems.append("'ANSWER>>>' comes before '<<<ANSWER'")
        else:
            body = raw[s.end() : e.start()]
            # The markers sit on their own lines: drop the one line break each of them brings.
            body = body[1:] if body.startswith("\n") else body
            body = body[:-1] if body.endswith("\n") else body
            inner = _unfence(body)
            if inner is not None and not (original or "").lstrip().startswith(("```", "~~~")):
                body = inner
            markup = body
            outside = raw[: s.start()] + "\n" + raw[e.end() :]
    statuses = {m.group(1).lower() for m in _STATUS.finditer(outside)}
    has_parallel: bool | None = None
    if not statuses:
        problems.append("no 'PARALLEL: yes|no' line")
    elif len(statuses) > 1:
        problems.append(f"conflicting PARALLEL lines: {sorted(statuses)}")
    else:
        word = statuses.pop()
        if word in _YES:
            has_parallel = True
        elif word in _NO:
            has_parallel = False
        else:
            problems.append(f"PARALLEL must be yes or no, got {word!r}")
    if has_parallel and markup is None and not problems:
        problems.append("PARALLEL: yes but no '<<<ANSWER ... ANSWER>>>' block")
    return RewriteReply(has_parallel, markup, problems)


def to_candidate(raw: str, source: str, original: str | None = None) -> Candidate:
    reply = parse_rewrite(raw, original)
    return Candidate(raw=raw, has_parallel=reply.has_parallel, markup=reply.markup, source=source)


def parse_verdict(raw: str) -> Vote:
    """A judge reply as a Vote; verdict None (with the reason saying why) when it breaks the format."""
    text = _THINK.sub("", raw, count=1)
    words = [m.group(1).lower() for m in _VERDICT.finditer(text)]
    reasons = [m.group(1).strip() for m in _REASON.finditer(text)]
    reason = reasons[0] if reasons else ""
    if not words:
        return Vote(None, "unparseable: no 'VERDICT: true|false' line", raw)
    values = set()
    for w in words:
        if w in _YES:
            values.add(True)
        elif w in _NO:
            values.add(False)
        else:
            return Vote(None, f"unparseable: verdict must be true or false, got {w!r}", raw)
    if len(values) > 1:
        return Vote(None, "unparseable: conflicting VERDICT lines", raw)
    return Vote(values.pop(), reason or "(no reason given)", raw)
