"""Span rewriter: an LLM picks which runs of paragraphs form parallel groups and labels them; rules do the rest.

The answer is shown with its paragraphs numbered ([1], [2], ...; a code block is one paragraph, shown as a
placeholder and never part of a group). The model replies with JSON:

    {"groups": [[{"paragraphs": [2], "title": "Kitchen appliances"}, {"paragraphs": [3, 4], "title": "Lighting"}]]}

Each inner list is a group of >= 2 branches; a branch is a run of consecutive paragraphs, the branches of a
group follow each other directly, groups do not overlap. Replies are parsed strictly (`parse_span_reply`):
placeholder titles (copied from the worked examples, or generic like "Point 1"), duplicate titles, titles
that are a clipped prefix of their paragraph, out-of-range, non-consecutive or overlapping runs and runs
holding code are rejected, with the reasons, so a second round can ask again. The model decides grouping and
labels for prose only: a branch that opens with a list marker, heading, bold lead or `Label:` keeps that head
as its title (`aspd.pipeline.rules.split_head`), exactly as the rule rewriter does.

Two ways to run it:
- online, through any ChatBackend (OpenAI-compatible endpoint or a local Transformers model): a bad reply is
  answered with the reasons and asked again, up to `rounds` times;
- offline, for GPU throughput: `write_requests` writes one chat request per answer ({id, messages}),
  `aspd distill --prompts REQUESTS.jsonl` answers them in large batches (keeping `id`, adding `answer`), and
  `read_replies` feeds those replies back. A sample whose reply is missing or bad gets a retry request (the
  bad reply and the reasons as two more turns) for a second round, and falls back to the rules meanwhile.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aspd.bench.metrics import word_count
from aspd.jsonl import JsonlReader
from aspd.markup import MarkupError
from aspd.pipeline.prompts import DEFAULT_PROMPTS, Prompts, span_messages
from aspd.pipeline.rules import (
    _BACK_REFERENCE,
    _CONCLUSION,
    MIN_ANSWER_WORDS,
    Item,
    RuleRewriter,
    Run,
    _heading,
    _last_text,
    _lines,
    _list_marker,
    _unique_heads,
    marker_problems,
    markup_for,
    split_head,
)
from aspd.pipeline.types import Candidate, Sample

__all__ = ["EXAMPLE_TITLES", "RetryFile", "SpanReply", "SpanRewriter", "Unit", "eligible", "numbered_paragraphs",
           "parse_span_reply", "read_replies", "retry_messages", "split_units", "write_requests"]

MAX_TITLE_WORDS = 6
MAX_TITLE_CHARS = 60

# Titles of the worked examples in the default prompt: a reply that copies one is not labelling its text.
EXAMPLE_TITLES = frozenset(t.lower() for t in re.findall(r'"title": "([^"]+)"', DEFAULT_PROMPTS.span_system.replace(
    "\\\n", "").replace("\n", " ")) if t != "...")
_GENERIC = re.compile(
    r"^(the )?(point|title|branch|paragraph|para|section|part|item|aspect|topic|label|group|step|option|idea|tip|"
    r"reason|heading|subject|key point|main point|example|text|content|intro(duction)?|conclusion|summary)s?"
    r"\s*#?\s*(\d+|[a-z]|one|two|three|four|five)?[.:]?$",
    re.IGNORECASE,
)
_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_WORDS = re.compile(r"[a-z0-9]+")


# ---------------------------------------------------------------------------------------------- units


@dataclass(frozen=True)
class Unit:
    """One numbered paragraph: answer[start:end] (no surrounding blank lines or indentation)."""

    start: int
    end: int
    code: bool
    lines: int


def split_units(answer: str) -> list[Unit]:
    """The answer's paragraphs: blocks between blank lines, a new one at each top-level list item or heading;
    a fenced code block is always a unit of its own (even without blank lines around it)."""
    lines = _lines(answer)
    units: list[Unit] = []
    first: int | None = None

    def close(stop: int) -> None:
        nonlocal first
        if first is not None:
            units.append(Unit(lines[first].content_start, _last_text(lines, first, stop), False, stop - first))
        first = None

    i = 0
    while i < len(lines):
        line = lines[i]
        if line.fence_end >= 0:  # an opening fence: the whole block
            close(i)
            end = line.fence_end
            units.append(Unit(line.content_start, lines[end].start + len(lines[end].text.rstrip()), True,
                              end - i + 1))
            i = end + 1
            continue
        if line.blank:
            close(i)
        else:
            marker = _list_marker(line)
            if first is not None and ((marker is not None and marker[1] <= 1) or _heading(line) is not None):
                close(i)
            if first is None:
                first = i
        i += 1
    close(len(lines))
    return units


def eligible(answer: str, units: Sequence[Unit], min_words: int = MIN_ANSWER_WORDS) -> bool:
    """Worth a request: long enough, and at least two paragraphs that are not code."""
    return word_count(answer) >= min_words and sum(not u.code for u in units) >= 2


def numbered_paragraphs(answer: str, units: Sequence[Unit]) -> str:
    """The answer as the model sees it: "[n] text" per paragraph, code blocks as placeholders."""
    out = []
    for n, u in enumerate(units, 1):
        if u.code:
            out.append(f"[{n}] (code block, {u.lines - 2 if u.lines > 2 else u.lines} line(s); never part of a group)")
        else:
            out.append(f"[{n}] {answer[u.start : u.end]}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- replies


@dataclass
class SpanReply:
    runs: list[Run] = field(default_factory=list)  # the groups, ready for `markup_for`
    problems: list[str] = field(default_factory=list)  # empty: the reply is usable
    skipped: list[str] = field(default_factory=list)  # groups left serial because no head or marker fits

    @property
    def ok(self) -> bool:
        return not self.problems


def _json_object(raw: str) -> Any:
    text = _THINK.sub("", raw, count=1)
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in the reply")
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError as e:
        raise ValueError(f"the JSON object does not parse ({e})") from None
    return obj


def _title_problem(title: Any, body: str) -> str | None:
    if not isinstance(title, str) or not title.strip():
        return "has no title"
    t = title.strip()
    words = _WORDS.findall(t.lower())
    if "\n" in t or len(t) > MAX_TITLE_CHARS or len(t.split()) > MAX_TITLE_WORDS:
        return f"title {t!r} is longer than {MAX_TITLE_WORDS} words"
    if not words or t.lower() in EXAMPLE_TITLES or _GENERIC.match(t) or re.search(r"[<>\[\]{}]|\.\.\.|…", t):
        return f"title {t!r} is a placeholder, not a label of its text"
    if _WORDS.findall(body.lower())[: len(words)] == words:
        return f"title {t!r} only repeats the first words of its paragraph"
    return None


def parse_span_reply(raw: str, answer: str, units: Sequence[Unit]) -> SpanReply:
    """Read a span reply against the answer's units; `problems` says what is wrong (empty when usable)."""
    out = SpanReply()
    try:
        obj = _json_object(raw)
    except ValueError as e:
        out.problems.append(str(e))
        return out
    groups = obj.get("groups") if isinstance(obj, dict) else None
    if not isinstance(groups, list):
        out.problems.append('the JSON object needs a "groups" list')
        return out
    last = 0  # 1-based number of the last paragraph used by an earlier group
    for g, group in enumerate(groups, 1):
        where = f"group {g}"
        if not isinstance(group, list) or len(group) < 2:
            out.problems.append(f"{where} must be a list of at least 2 branches")
            continue
        spans: list[tuple[int, int, str]] = []
        for b, branch in enumerate(group, 1):
            at = f"{where}, branch {b}"
            paras = branch.get("paragraphs") if isinstance(branch, dict) else None
            if isinstance(paras, int) and not isinstance(paras, bool):
                paras = [paras]
            if (not isinstance(paras, list) or not paras
                    or not all(isinstance(p, int) and not isinstance(p, bool) for p in paras)):
                out.problems.append(f'{at} needs "paragraphs": a list of paragraph numbers')
                continue
            if any(not 1 <= p <= len(units) for p in paras):
                out.problems.append(f"{at} names a paragraph outside 1..{len(units)}")
                continue
            if paras != list(range(paras[0], paras[0] + len(paras))):
                out.problems.append(f"{at}: paragraphs {paras} are not consecutive")
                continue
            if any(units[p - 1].code for p in paras):
                out.problems.append(f"{at} includes a code block (code is never part of a group)")
                continue
            expected = spans[-1][1] + 1 if spans else None
            if expected is not None and paras[0] != expected:
                out.problems.append(f"{at} starts at paragraph {paras[0]}, not right after the previous branch "
                                    f"({expected})")
                continue
            if paras[0] <= last:
                out.problems.append(f"{at} overlaps an earlier group or comes before it")
                continue
            spans.append((paras[0], paras[-1], branch.get("title")))
        if len(spans) != len(group):
            continue
        last = spans[-1][1]
        spans = _trim_edges(answer, units, spans)
        if len(spans) < 2:
            out.skipped.append(f"{where} left serial: under 2 branches without the opening and closing paragraphs")
            continue
        shape = _shape_problem(answer, units, spans)
        if shape is not None:
            out.problems.append(f"{where}: {shape}")
            continue
        run, problems = _group_run(answer, units, spans, where)
        out.problems += problems
        if run is None and not problems:
            out.skipped.append(f"{where} left serial: its list markers or heads cannot be laid out")
        elif run is not None:
            out.runs.append(run)
    if out.problems:
        out.runs = []
    return out


MAX_PROSE_PARAGRAPHS = 2  # a prose branch longer than this is several points (or the whole answer) in one


def _is_opening(answer: str, units: Sequence[Unit], i: int) -> bool:
    return i == 1 and len(units) > 2 and split_head(answer[units[0].start : units[0].end]) is None


def _is_closing(answer: str, units: Sequence[Unit], i: int) -> bool:
    text = answer[units[i - 1].start : units[i - 1].end].lstrip("*_ ")
    return i == len(units) > 2 and bool(_CONCLUSION.match(text) or _BACK_REFERENCE.match(text))


def _trim_edges(answer: str, units: Sequence[Unit], spans: list[tuple[int, int, Any]]) -> list[tuple[int, int, Any]]:
    """Drop a first branch that is just the answer's opening paragraph and a last one that is just its
    closing summary: the real 1.5B teacher labels those as points even when it splits the rest well."""
    if spans and spans[0][0] == spans[0][1] and _is_opening(answer, units, spans[0][0]):
        spans = spans[1:]
    if spans and spans[-1][0] == spans[-1][1] and _is_closing(answer, units, spans[-1][0]):
        spans = spans[:-1]
    return spans


def _shape_problem(answer: str, units: Sequence[Unit], spans: Sequence[tuple[int, int, Any]]) -> str | None:
    """A group that cannot be one point per branch: it takes in the opening paragraph or a closing summary,
    or lumps many prose paragraphs into one branch (small models like to split "intro | everything else")."""
    first, stop = spans[0][0], spans[-1][1]
    if _is_opening(answer, units, first):
        return "includes paragraph [1], the opening of the answer (openings stay outside groups)"
    if _is_closing(answer, units, stop):
        return f"includes paragraph [{stop}], the closing summary (it stays outside groups)"
    def run_text(i: int, j: int) -> str:  # a heading alone on its paragraph heads what follows it
        return answer[units[i - 1].start : units[j - 1].end]

    for b, (a, z, _) in enumerate(spans, 1):
        shape = _head_shape(run_text(a, z))
        for k in range(a + 1, z + 1):
            later = _head_shape(run_text(k, z))
            if later is not None and (shape is None or later == shape):
                return f"branch {b} holds several points (paragraph [{k}] opens a point of its own)"
        if z - a + 1 > MAX_PROSE_PARAGRAPHS and shape is None:
            return (f"branch {b} spans paragraphs {a}-{z}: give each point its own branch "
                    f"(at most {MAX_PROSE_PARAGRAPHS} paragraphs of plain text per branch)")
    return None


def _head_shape(text: str) -> str | None:
    """What kind of head a paragraph opens with (heading, bold, numbered, bullet, label), or None."""
    head = split_head(text)
    if head is None:
        return None
    for shape, pattern in (("heading", r"#"), ("bold", r"\*\*|__"), ("numbered", r"\d"), ("bullet", r"[-*+\u2022]")):
        if re.match(pattern, head):
            return shape
    return "label"


def _group_run(answer: str, units: Sequence[Unit], spans: Sequence[tuple[int, int, Any]],
               where: str) -> tuple[Run | None, list[str]]:
    """The run of one group: heads where the text opens with one (rules decide), else the model's label."""
    problems: list[str] = []
    bounds = [(units[first - 1].start, units[stop - 1].end) for first, stop, _ in spans]
    texts = [answer[s:e] for s, e in bounds]
    heads = [split_head(t) for t in texts]
    head_ix = [i for i, h in enumerate(heads) if h is not None]
    unique = _unique_heads([texts[i] for i in head_ix], [heads[i] or "" for i in head_ix])
    if unique is None:
        return None, []  # heads that cannot be told apart: the rules' call, not the model's fault
    for i, h in zip(head_ix, unique, strict=True):
        heads[i] = h
    labels: list[str] = []
    for b, ((_, _, title), text, head) in enumerate(zip(spans, texts, heads, strict=True), 1):
        if head is not None:
            labels.append(head)
            continue
        problem = _title_problem(title, text)
        if problem is None and title.strip().lower() in (x.lower() for x in labels):
            problem = f"title {title.strip()!r} is used twice"
        if problem is not None:
            problems.append(f"{where}, branch {b}: {problem}")
        labels.append(title.strip() if isinstance(title, str) else "")
    if problems:
        return None, problems
    items = [Item(s, e, label, head=h is not None) for (s, e), label, h in zip(bounds, labels, heads, strict=True)]
    run = Run("spans", tuple(items))
    return (None if marker_problems(run.group(answer)) else run), []


def retry_messages(messages: list[dict[str, str]], raw: str, problems: Sequence[str]) -> list[dict[str, str]]:
    """The request again, with the unusable reply and the reasons as two more turns."""
    why = "; ".join(problems[:8])
    return [*messages, {"role": "assistant", "content": raw},
            {"role": "user", "content": f"That reply cannot be used: {why}. Reply again with the corrected JSON "
                                        "object only."}]


# ---------------------------------------------------------------------------------------------- offline files


def read_replies(paths: Iterable[str | Path]) -> dict[str, list[str]]:
    """id -> replies, in file order, from `aspd distill` output ({id, answer, finish?, ...} lines).

    A reply cut at the token limit (finish "length") is kept: the parser then says what is wrong with it.
    Raises ValueError naming file:line for a line that is not such an object.
    """
    out: dict[str, list[str]] = {}
    for path in paths:
        reader = JsonlReader(path, error=ValueError)
        for lineno, obj in reader:
            if not isinstance(obj, dict) or not isinstance(obj.get("answer"), str) or "id" not in obj:
                reader.bad(lineno, "expected {id, answer} (a line of `aspd distill` output)")
            out.setdefault(str(obj["id"]), []).append(obj["answer"])
    return out


def write_requests(samples: Iterable[Sample], path: str | Path, prompts: Prompts = DEFAULT_PROMPTS,
                   min_words: int = MIN_ANSWER_WORDS) -> dict[str, int]:
    """One {id, messages} line per eligible sample (the input `aspd distill --prompts` reads); counts."""
    counts = {"samples": 0, "requests": 0}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for s in samples:
            counts["samples"] += 1
            units = split_units(s.answer)
            if not eligible(s.answer, units, min_words):
                continue
            msgs = span_messages(prompts, s.messages, numbered_paragraphs(s.answer, units))
            f.write(json.dumps({"id": s.id, "messages": msgs}, ensure_ascii=False) + "\n")
            counts["requests"] += 1
    tmp.replace(p)
    return counts


class RetryFile:
    """Appends retry requests ({id, messages}) to a JSONL file, one flushed line each; counts them."""

    def __init__(self, path: str | Path, *, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115 (open for the run)
        self.written = 0

    def __call__(self, request: dict[str, Any]) -> None:
        self._f.write(json.dumps(request, ensure_ascii=False) + "\n")
        self._f.flush()
        self.written += 1

    def close(self) -> None:
        self._f.close()


# ---------------------------------------------------------------------------------------------- rewriter


class SpanRewriter:
    """Rewriter: span replies from a ChatBackend (online) or from distilled reply files (offline).

    Without a usable span reply the sample falls back to `fallback` (the rule rewriter; None: no fallback).
    Offline, `retry` receives a retry request ({id, messages}) for each eligible sample without a usable reply.
    """

    name = "spans"

    def __init__(self, chat: Any = None, replies: Mapping[str, list[str]] | None = None, *,
                 prompts: Prompts | None = None, fallback: RuleRewriter | None = None, rounds: int = 2,
                 min_words: int = MIN_ANSWER_WORDS,
                 retry: Callable[[dict[str, Any]], None] | None = None) -> None:
        if (chat is None) == (replies is None):
            raise ValueError("give exactly one of a chat backend (online) or replies (offline)")
        self.chat, self.replies = chat, replies
        self.prompts = prompts or getattr(chat, "prompts", None) or DEFAULT_PROMPTS
        self.fallback = fallback
        self.rounds = max(1, rounds)
        self.min_words = min_words
        self.retry = retry

    def _candidate(self, raw: str, answer: str, units: Sequence[Unit]) -> tuple[Candidate, SpanReply]:
        reply = parse_span_reply(raw, answer, units)
        if not reply.ok:
            return Candidate(raw, None, None, self.name, tuple(reply.problems)), reply
        if not reply.runs:
            return Candidate(raw, False, None, self.name), reply
        try:
            markup = markup_for(answer, reply.runs)
        except MarkupError as e:  # the answer itself holds markup tags
            return Candidate(raw, None, None, self.name, (f"cannot mark up this answer: {e}",)), reply
        return Candidate(raw, True, markup, self.name), reply

    async def rewrite(self, sample: Sample, n: int) -> list[Candidate]:
        if n <= 0:
            return []
        units = split_units(sample.answer)
        out: list[Candidate] = []
        if eligible(sample.answer, units, self.min_words):
            messages = span_messages(self.prompts, sample.messages, numbered_paragraphs(sample.answer, units))
            out = await (self._offline(sample, messages, units, n) if self.replies is not None
                         else self._online(sample, messages, units, n))
        if not any(c.has_parallel for c in out) and self.fallback is not None:
            out += self.fallback.candidates(sample.answer, n)
        return out

    async def _offline(self, sample: Sample, messages: list[dict[str, str]], units: Sequence[Unit],
                       n: int) -> list[Candidate]:
        assert self.replies is not None
        out: list[Candidate] = []
        bad: tuple[str, list[str]] | None = None
        for raw in self.replies.get(sample.id, []):
            c, reply = self._candidate(raw, sample.answer, units)
            out.append(c)
            if not reply.ok:
                bad = (raw, reply.problems)
        usable = [c for c in out if c.has_parallel is not None]
        if not usable and self.retry is not None:
            self.retry({"id": sample.id, "messages": retry_messages(messages, *bad) if bad else messages})
        # Usable replies first, so that a sample with many replies keeps its good ones within n.
        return sorted(out, key=lambda c: c.has_parallel is None)[:n]

    async def _online(self, sample: Sample, messages: list[dict[str, str]], units: Sequence[Unit],
                      n: int) -> list[Candidate]:
        out: list[Candidate] = []
        replies = await self.chat.complete(messages, judge=False, count=n)
        for raw in replies:
            if raw is None:
                continue  # a failed request; the backend has logged it
            c, reply = self._candidate(raw, sample.answer, units)
            for _ in range(self.rounds - 1):
                if reply.ok:
                    break
                (again,) = await self.chat.complete(retry_messages(messages, raw, reply.problems), judge=False,
                                                    count=1)
                if again is None:
                    break
                raw = again
                c, reply = self._candidate(raw, sample.answer, units)
            out.append(c)
        return out
