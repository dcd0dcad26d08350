"""Rule-based rewriter: find parallel structure in a plain answer without changing a character of it.

For users without a strong rewriting LLM (DESIGN.md section 5). Detected structures ("runs" of >= 2 items):

- lists: numbered (`1.` / `1)`) and bulleted (`-`, `*`, `+`, `•`) items at one indentation; an item keeps
  its indented / lazily continued lines, nested lists and code blocks. A numbered item also keeps unindented
  paragraphs up to the next item of the sequence (LLMs rarely indent those); a bulleted list ends at an
  unindented paragraph after a blank line, as in Markdown, so "Pros: - a - b / Cons: - c - d" stays two runs;
- headed sections: `#`..`######` headings and whole-line bold headings (`**Pros:**`, ranked below `######`);
  a section runs to the next heading of the same or a higher rank; a closing "In summary ..." paragraph after
  the last section stays serial;
- labelled paragraphs: consecutive blank-line-separated paragraphs that start with `Label:` or `**Label**`.

Each item becomes a branch whose text is the item's own text, markers included ("1. ...", "## Diet ..."), so
`flatten(parse(markup))` gives back the answer up to whitespace (exactly, except blank lines between items and
a list's indentation). Code fences are opaque: nothing inside them is detected and they are never split.
Groups do not nest: strategies choose non-overlapping runs (outermost, innermost, the longest, lists only).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aspd.markup import Branch, Document, Group, MarkupError, Segment, Serial, render
from aspd.pipeline.types import Candidate, Sample

__all__ = ["STRATEGIES", "RuleRewriter", "Item", "Run", "find_runs", "markup_for", "title_from"]

MAX_TITLE_WORDS = 6
MAX_TITLE_CHARS = 48
BOLD_RANK = 7  # whole-line bold headings rank below '######'

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(\S.*?)[ \t]*#*[ \t]*$")
_BOLD_LINE = re.compile(r"^ {0,3}(\*\*|__)(?=\S)([^*_\n]{1,80}?)(?<=\S)\1[ \t]*:?[ \t]*$")
_NUMBERED = re.compile(r"^([ \t]*)(\d{1,3})([.)])[ \t]+\S")
_BULLET = re.compile(r"^([ \t]*)([-*+•])[ \t]+\S")
_RULE = re.compile(r"^ {0,3}([-*_])([ \t]*\1){2,}[ \t]*$")
_BOLD_LABEL = re.compile(r"^ {0,3}(\*\*|__)(?=\S)([^*_\n]{1,80}?)(?<=\S)\1[ \t]*:?")
_PLAIN_LABEL = re.compile(r"^ {0,3}([A-Z0-9][^:\n]{0,48}?):(?=[ \t]+\S|[ \t]*$)")
_CONCLUSION = re.compile(
    r"^(in (summary|conclusion|short)|overall|to (summarize|summarise|sum up|conclude)|ultimately|"
    r"by following|remember|all in all|these (tips|steps|strategies|are))\b",
    re.IGNORECASE,
)
_CONCLUSION_HEADING = re.compile(
    r"^(conclusion|summary|in (summary|conclusion|short)|final thoughts|overall|tl;?dr|wrapping up)\b", re.IGNORECASE
)
_LINK = re.compile(r"\[([^\]\n]*)\]\([^)\n]*\)")
_MARKDOWN = re.compile(r"\*+|`+|#+|__|[<>|\[\]\"]")
_LEAD_NUMBER = re.compile(r"^(\d{1,3}[.)]|[-*+•])\s+")
_CLAUSE_END = re.compile(r"[.:;!?](\s|$)|\s[-–—]\s|\(")


@dataclass(frozen=True)
class Item:
    start: int  # char offset of the item's first character (its marker)
    end: int  # char offset just past its last non-blank character
    title: str


@dataclass(frozen=True)
class Run:
    kind: str  # "numbered" | "bullets" | "sections" | "labels"
    items: tuple[Item, ...]

    @property
    def start(self) -> int:
        return self.items[0].start

    @property
    def end(self) -> int:
        return self.items[-1].end

    @property
    def size(self) -> int:
        return self.end - self.start


# ---------------------------------------------------------------------------------------------- lines


@dataclass
class _Line:
    start: int  # offset of the line in the answer
    text: str  # without the line break
    fence: bool  # a fence line or inside a fenced block
    fence_end: int  # for an opening fence line: index of the last line of its block

    @property
    def blank(self) -> bool:
        return not self.fence and not self.text.strip()

    @property
    def indent(self) -> int:
        return _indent(self.text)

    @property
    def content_start(self) -> int:
        return self.start + len(self.text) - len(self.text.lstrip())


def _indent(text: str) -> int:
    return len(text.expandtabs(4)) - len(text.expandtabs(4).lstrip())


def _lines(text: str) -> list[_Line]:
    out: list[_Line] = []
    pos = 0
    for raw in text.splitlines(keepends=True):
        out.append(_Line(pos, raw.rstrip("\r\n"), False, -1))
        pos += len(raw)
    i = 0
    while i < len(out):
        m = _FENCE.match(out[i].text)
        if m is None:
            i += 1
            continue
        mark = m.group(1)
        j = i + 1
        # Closing fence: same character, at least as long, nothing else on the line (unclosed: to the end).
        while j < len(out) and not re.fullmatch(rf"\s*{re.escape(mark[0])}{{{len(mark)},}}\s*", out[j].text):
            j += 1
        j = min(j, len(out) - 1)
        for k in range(i, j + 1):
            out[k].fence = True
        out[i].fence_end = j
        i = j + 1
    return out


def _list_marker(line: _Line) -> tuple[str, int, int] | None:
    """(kind, indent, number) of a list item line, else None (fences, rules and headings are not items)."""
    if line.fence or _RULE.match(line.text):
        return None
    if m := _NUMBERED.match(line.text):
        return "numbered", _indent(m.group(1)), int(m.group(2))
    if m := _BULLET.match(line.text):
        return "bullets", _indent(m.group(1)), 0
    return None


def _heading(line: _Line) -> tuple[int, str] | None:
    """(rank, text) of a heading line: 1-6 for '#'s, BOLD_RANK for a whole-line bold heading."""
    if line.fence:
        return None
    if m := _HEADING.match(line.text):
        return len(m.group(1)), m.group(2)
    if m := _BOLD_LINE.match(line.text):
        return BOLD_RANK, m.group(2)
    return None


def _is_break(line: _Line) -> bool:
    """A line that ends any list item whatever its indentation: a heading or a horizontal rule."""
    return not line.fence and (_heading(line) is not None or _RULE.match(line.text) is not None)


def _last_text(lines: Sequence[_Line], lo: int, hi: int) -> int:
    """Offset just past the last non-blank character of lines[lo:hi] (hi > lo, lines[lo] non-blank)."""
    k = hi - 1
    while k > lo and lines[k].blank:
        k -= 1
    return lines[k].start + len(lines[k].text.rstrip())


# ---------------------------------------------------------------------------------------------- titles


def title_from(text: str) -> str:
    """A short title for an item: its bold lead, its `Label:`, its heading, else its first words.

    Markdown is stripped and the result capped at MAX_TITLE_WORDS words; may be "" (the caller numbers it).
    """
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = _LEAD_NUMBER.sub("", first.lstrip("# \t")).strip()
    first = _LEAD_NUMBER.sub("", first).strip()  # "### 1. Diet" -> "Diet"
    first = _LINK.sub(r"\1", first)
    if m := _BOLD_LABEL.match(first):
        head = m.group(2)
    elif (m := _PLAIN_LABEL.match(first)) and len(m.group(1).split()) <= MAX_TITLE_WORDS:
        head = m.group(1)
    else:
        head = first
        if (cut := _CLAUSE_END.search(head, 1)) is not None:
            head = head[: cut.start()]
        if (comma := head.find(", ")) > 0 and len(head[:comma].split()) >= 2:
            head = head[:comma]  # "Discriminative models, also known as ..." -> "Discriminative models"
    words = _MARKDOWN.sub("", head).split()[:MAX_TITLE_WORDS]
    title = " ".join(words).strip(" .,:;!?-–—'")
    while len(title) > MAX_TITLE_CHARS and " " in title:
        title = title.rsplit(" ", 1)[0]
    return title[:MAX_TITLE_CHARS].strip()


def _unique_titles(titles: Sequence[str], fallback: str) -> list[str]:
    """Non-empty titles, unique within the group (case-insensitively): repeats get " 2", " 3"..."""
    out: list[str] = []
    seen: set[str] = set()
    for i, t in enumerate(titles):
        base = t or f"{fallback} {i + 1}"
        title, k = base, 2
        while title.lower() in seen:  # the number replaces a last word if the title is already at its cap
            title, k = " ".join([*base.split()[: MAX_TITLE_WORDS - 1], str(k)]), k + 1
        seen.add(title.lower())
        out.append(title)
    return out


def _make_run(kind: str, text: str, spans: Sequence[tuple[int, int]], fallback: str) -> Run:
    titles = _unique_titles([title_from(text[s:e]) for s, e in spans], fallback)
    return Run(kind, tuple(Item(s, e, t) for (s, e), t in zip(spans, titles, strict=True)))


# ---------------------------------------------------------------------------------------------- detectors


@dataclass
class _ItemEnd:
    stop: int  # index of the first line after the item
    next_number: int | None  # number of the sibling item that starts at `stop` (bullets: 0), None if none
    blocks: int  # unindented blank-separated blocks the item kept because the numbering resumes after them


def _is_next(marker: tuple[str, int, int], kind: str, indent: int, number: int) -> bool:
    # Numbered siblings go on by one, or repeat the number (Markdown renumbers "1. 1. 1.").
    return marker[0] == kind and marker[1] == indent and (kind == "bullets" or marker[2] in (number, number + 1))


def _list_item_end(
    lines: Sequence[_Line], i: int, kind: str, indent: int, number: int, budget: int = 0
) -> _ItemEnd:
    """Scan the item opened at line i.

    `budget`: how many unindented blocks the LAST item of a numbered list may keep (its earlier items all
    kept some, so that is the answer's style); it stops early at an "In summary..." paragraph.
    """
    k = i + 1
    prev_blank = False
    blocks = 0
    while k < len(lines):
        line = lines[k]
        if line.blank:
            prev_blank = True
            k += 1
            continue
        if _is_break(line) and line.indent <= indent + 3:
            break
        marker = _list_marker(line)
        if marker is not None and _is_next(marker, kind, indent, number):
            return _ItemEnd(k, marker[2], blocks)
        if (marker is not None and marker[1] <= indent) or (line.indent <= indent and prev_blank):
            # Another list at this level or unindented text after a blank line ends a bulleted item. A
            # numbered item keeps bullets attached to it, and unindented blocks when its numbering resumes
            # after them (LLMs rarely indent the paragraphs of a numbered item).
            if kind != "numbered" or (marker is not None and marker[0] == "numbered"):
                break
            if prev_blank:
                if _numbering_resumes(lines, k, indent, number):
                    blocks += 1
                elif budget > 0 and not _CONCLUSION.match(line.text.lstrip("*_ ")):
                    budget -= 1
                else:
                    break
        # Indented content, a nested list, a lazy continuation line or a whole code block.
        k = (line.fence_end if line.fence_end >= 0 else k) + 1
        prev_blank = False
    return _ItemEnd(k, None, blocks)


def _numbering_resumes(lines: Sequence[_Line], k: int, indent: int, number: int) -> bool:
    for line in lines[k:]:
        if _is_break(line) and line.indent <= indent + 3:
            return False
        marker = _list_marker(line)
        if marker is not None and marker[0] == "numbered" and marker[1] == indent:
            return marker[2] in (number, number + 1)
    return False


def _list_runs(text: str, lines: Sequence[_Line]) -> tuple[list[Run], set[int]]:
    """Top-level list runs (nested lists stay inside their item), and the lines lists cover."""
    runs: list[Run] = []
    covered: set[int] = set()
    i = 0
    while i < len(lines):
        marker = _list_marker(lines[i])
        if marker is None:
            i = (lines[i].fence_end if lines[i].fence_end >= 0 else i) + 1
            continue
        kind, indent, number = marker
        spans: list[tuple[int, int]] = []
        kept: list[int] = []
        while True:
            item = _list_item_end(lines, i, kind, indent, number)
            if item.next_number is None and kind == "numbered" and kept and min(kept) > 0:
                item = _list_item_end(lines, i, kind, indent, number, budget=min(kept))
            spans.append((lines[i].content_start, _last_text(lines, i, item.stop)))
            covered.update(range(i, item.stop))
            kept.append(item.blocks)
            if item.next_number is None:
                break
            i, number = item.stop, item.next_number
        end = item.stop
        # Trailing blank lines are not the list's; the line that ended it is scanned again.
        while end - 1 in covered and lines[end - 1].blank:
            covered.discard(end - 1)
            end -= 1
        if len(spans) >= 2:
            runs.append(_make_run(kind, text, spans, "Item"))
        i = max(end, i + 1)
    return runs, covered


def _section_runs(text: str, lines: Sequence[_Line], covered: set[int], lo: int, hi: int) -> list[Run]:
    """Runs of sibling headed sections in lines[lo:hi], recursively (sub-sections are inner runs)."""
    heads = [(k, h[0]) for k in range(lo, hi) if k not in covered and (h := _heading(lines[k])) is not None]
    if not heads:
        return []
    rank = min(r for _, r in heads)
    tops = [k for k, r in heads if r == rank]
    bounds = [*tops, hi]
    runs: list[Run] = []
    # Whatever comes before the first top heading may hold deeper headings of its own.
    runs += _section_runs(text, lines, covered, lo, tops[0])
    for a, b in zip(bounds, bounds[1:], strict=False):
        runs += _section_runs(text, lines, covered, a + 1, b)
    if len(tops) < 2:
        return runs
    if _CONCLUSION_HEADING.match(title_from(lines[tops[-1]].text)):
        hi = tops.pop()  # a closing "## Conclusion" section is no branch
    if len(tops) < 2:
        return runs
    stop = _conclusion_cut(lines, covered, tops[-1] + 1, hi)
    spans = [(lines[a].content_start, _last_text(lines, a, b)) for a, b in zip(tops, [*tops[1:], stop], strict=True)]
    return [_make_run("sections", text, spans, "Part"), *runs]


def _conclusion_cut(lines: Sequence[_Line], covered: set[int], lo: int, hi: int) -> int:
    """Where the last section ends: before a closing 'In summary...' paragraph, else at hi."""
    body = False  # the section keeps at least one line of its own
    for k in range(lo, hi):
        line = lines[k]
        if (
            body and lines[k - 1].blank and k not in covered and not line.fence
            and line.indent == 0 and _CONCLUSION.match(line.text.lstrip("*_ "))
        ):
            return k
        body = body or not line.blank
    return hi


def _label_runs(text: str, lines: Sequence[_Line], covered: set[int]) -> list[Run]:
    """Runs of consecutive labelled paragraphs outside lists and headings."""
    paragraphs: list[tuple[int, int]] = []  # [first, stop) line indices
    breaks: list[int] = []  # paragraph indices preceded by a list, heading or rule
    k = 0
    while k < len(lines):
        line = lines[k]
        if line.blank:
            k += 1
            continue
        if k in covered or _is_break(line):
            breaks.append(len(paragraphs))
            k += 1
            continue
        first = k
        while k < len(lines) and not lines[k].blank and k not in covered and not _is_break(lines[k]):
            k = (lines[k].fence_end if lines[k].fence_end >= 0 else k) + 1
        paragraphs.append((first, k))
    runs: list[Run] = []
    current: list[tuple[int, int]] = []

    def close() -> None:
        if len(current) >= 2:
            spans = [(lines[a].content_start, _last_text(lines, a, b)) for a, b in current]
            runs.append(_make_run("labels", text, spans, "Part"))
        current.clear()

    break_set = set(breaks)
    for p, (a, b) in enumerate(paragraphs):
        if p in break_set:
            close()
        if _is_labelled(lines[a], b - a):
            current.append((a, b))
        else:
            close()
    close()
    return runs


def _is_labelled(line: _Line, n_lines: int) -> bool:
    if line.fence:
        return False
    if _BOLD_LABEL.match(line.text):
        return True
    m = _PLAIN_LABEL.match(line.text)
    if m is None:
        return False
    label = m.group(1)
    if len(label.split()) > MAX_TITLE_WORDS or re.search(r"[.!?]\s|//|\"", label):
        return False
    # "Label:" alone on its line needs a body below it ("Here are some tips:" + a list is not a label).
    return bool(line.text[m.end() :].strip()) or n_lines > 1


def find_runs(answer: str) -> list[Run]:
    """Every candidate run of >= 2 parallel items in the answer, outer and inner ones (they may overlap)."""
    lines = _lines(answer)
    lists, covered = _list_runs(answer, lines)
    runs = [*lists, *_section_runs(answer, lines, covered, 0, len(lines)), *_label_runs(answer, lines, covered)]
    return sorted(runs, key=lambda r: (r.start, -r.size))


# ---------------------------------------------------------------------------------------------- strategies


def _disjoint(runs: Sequence[Run], order: Callable[[Run], tuple[int, int]]) -> list[Run]:
    taken: list[Run] = []
    for r in sorted(runs, key=order):
        if all(r.end <= t.start or r.start >= t.end for t in taken):
            taken.append(r)
    return sorted(taken, key=lambda r: r.start)


def _outer(runs: Sequence[Run]) -> list[Run]:
    return _disjoint(runs, lambda r: (r.start, -r.size))


def _inner(runs: Sequence[Run]) -> list[Run]:
    return _disjoint(runs, lambda r: (r.size, r.start))


def _longest(runs: Sequence[Run]) -> list[Run]:
    return [max(runs, key=lambda r: (r.size, len(r.items)))] if runs else []


def _lists(runs: Sequence[Run]) -> list[Run]:
    return _outer([r for r in runs if r.kind in ("numbered", "bullets")])


STRATEGIES: dict[str, Callable[[Sequence[Run]], list[Run]]] = {
    "outer": _outer,  # every run, outermost first: most parallel text
    "inner": _inner,  # finest runs (e.g. the lists inside sections rather than the sections)
    "longest": _longest,  # one group only: the least risky
    "lists": _lists,  # list runs only
}


def markup_for(answer: str, runs: Sequence[Run]) -> str:
    """Markup of the answer with each (non-overlapping) run as a group; raises MarkupError if not writable.

    One newline next to each group goes into the markup's own line breaks, so tags sit on their own lines.
    """
    segments: list[Segment] = []
    pos = 0
    for run in sorted(runs, key=lambda r: r.start):
        before = answer[pos : run.start]
        before = before[: before.rfind("\n") + 1]  # drop the run's indentation (whitespace only)
        before = before[1:] if pos and before.startswith("\n") else before
        before = before[:-1] if before.endswith("\n") else before
        if before.strip():
            segments.append(Serial(before))
        segments.append(Group(tuple(Branch(it.title, answer[it.start : it.end]) for it in run.items)))
        pos = run.end
    after = answer[pos:]
    after = after[1:] if after.startswith("\n") else after
    if after.strip():
        segments.append(Serial(after))
    return render(Document(tuple(segments)))


class RuleRewriter:
    """Rewriter backend from lists, headings and labelled paragraphs; deterministic, no model needed."""

    name = "rules"

    def __init__(self, strategies: Sequence[str] = tuple(STRATEGIES)) -> None:
        unknown = [s for s in strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"unknown rule strategies {unknown}; choose from {list(STRATEGIES)}")
        self.strategies = tuple(strategies)

    def candidates(self, answer: str, n: int) -> list[Candidate]:
        """Up to n distinct candidates, one per strategy that finds something (synchronous core)."""
        if n <= 0:
            return []
        runs = find_runs(answer)
        out: list[Candidate] = []
        seen: set[str] = set()
        for strategy in self.strategies:
            chosen = STRATEGIES[strategy](runs)
            if not chosen:
                continue
            try:
                markup = markup_for(answer, chosen)
            except MarkupError:
                continue  # the answer itself contains markup tags: it cannot be marked up safely
            if markup in seen:
                continue
            seen.add(markup)
            out.append(Candidate(raw=markup, has_parallel=True, markup=markup, source=f"{self.name}:{strategy}"))
            if len(out) >= n:
                break
        if not out:
            note = "no parallel structure found (lists, headed sections, labelled paragraphs)"
            out.append(Candidate(raw=note, has_parallel=False, markup=None, source=self.name))
        return out

    async def rewrite(self, sample: Sample, n: int) -> list[Candidate]:
        return self.candidates(sample.answer, n)
