"""Rule-based rewriter: find parallel structure in a plain answer without changing a character of it.

For users without a strong rewriting LLM, and as the head/fallback logic of the span rewriter (DESIGN.md
section 5). Detected structures ("runs" of >= 2 items):

- lists: numbered (`1.` / `1)`) and bulleted (`-`, `*`, `+`, `•`) items at one indentation; an item keeps
  its indented / lazily continued lines, nested lists and code blocks. A numbered item also keeps unindented
  paragraphs up to the next item of the sequence (LLMs rarely indent those); a bulleted list ends at an
  unindented paragraph after a blank line, as in Markdown, so "Pros: - a - b / Cons: - c - d" stays two runs;
- headed sections: `#`..`######` headings, whole-line bold headings (`**Pros:**`, ranked below `######`) and
  short label lines (`Pros:` alone on its line, ranked lowest); a section runs to the next heading of the same
  or a higher rank; a closing "In summary ..." paragraph or "## Conclusion" section stays serial;
- labelled paragraphs: consecutive blank-line-separated paragraphs that start with `Label:` or `**Label**`;
- labelled lines: adjacent lines (no blank line between) that each start with a bold label and a colon or a
  dash (`**Plot:** A narrative ...`, `**1. Zoo** - Home to ...`), one item per line, unless a label repeats
  (dialogue, "Myth:/Fact:" pairs) or an item names an earlier one's label;
- prose paragraphs: >= 2 consecutive paragraphs of similar length (>= PARA_MIN_WORDS words each) that open
  neither the answer nor with a word that refers back ("This", "However", "Additionally", ...).

Heads. The marker and the label of an item go into its title, which is then a head (`aspd.markup.is_head`):
shown to the reader, written by the main stream before the group opens, so numbering and bullets come out in
reading order; the branch body continues right after it and never starts with a list marker or repeats its
title: "1. **Diet**: Eat more" -> "1. **Diet**:" + " Eat more"; "- Walk daily to stay fit." -> "- Walk daily"
+ " to stay fit." (the marker and at most HEAD_WORDS words, cut at a word boundary before clause punctuation
or a function word); "## Sleep\\n\\nText" -> "## Sleep" + "\\n\\nText"; "Cost: text" -> "Cost:" + " text".
Heads are unique within a group (extended by a word where they collide; else the run stays serial) and never
hold a line break. Only prose paragraphs get hidden label titles: a keyphrase of the first sentence that the
body does not start with.

Sequential steps (a later item says "then", "the previous step", ...), runs of repeated numbers (`1. 1. 1.`)
and answers under MIN_ANSWER_WORDS words stay serial. `flatten(parse(markup))` gives back the answer
(exactly, except blank lines between items and a list's indentation). Code fences are opaque: nothing inside
them is detected and they are never split. Groups do not nest: strategies choose non-overlapping runs
(outermost, innermost, the longest, lists only).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aspd.bench.metrics import word_count
from aspd.markup import (
    Branch,
    Document,
    Group,
    MarkupError,
    Segment,
    Serial,
    is_head,
    render,
    validate,
)
from aspd.pipeline.types import Candidate, Sample

__all__ = ["MIN_ANSWER_WORDS", "STRATEGIES", "Item", "RuleRewriter", "Run", "find_runs", "head_number",
           "keyphrases", "marker_problems", "markup_for", "split_head", "title_from"]

MAX_TITLE_WORDS = 6
MAX_TITLE_CHARS = 48
HEAD_WORDS = 4  # a plain item's head: its marker and at most this many words
MAX_HEAD_WORDS = 8  # the most a head may grow to close Markdown or to differ from a sibling
MAX_BOLD_WORDS = 12  # a longer bold lead is cut like plain text
MIN_ANSWER_WORDS = 100  # ~128 tokens: shorter answers gain nothing from a group and stay serial
PARA_MIN_WORDS = 25
PARA_MAX_RATIO = 2.5  # neighbouring prose paragraphs of one run differ in length by at most this factor
BOLD_RANK = 7  # whole-line bold headings rank below '######'
LABEL_RANK = 8  # "Pros:" alone on its line ranks below bold headings

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(\S.*?)[ \t]*#*[ \t]*$")
_BOLD_LINE = re.compile(r"^ {0,3}(\*\*|__)(?=\S)([^*_\n]{1,80}?)(?<=\S)\1[ \t]*:?[ \t]*$")
_LABEL_LINE = re.compile(r"^ {0,3}([A-Z][^:\n]{0,40}?):[ \t]*$")
_NOT_A_LABEL_LINE = re.compile(
    r"^(here|example|examples|for example|for instance|output|input|explanation|code|note|notes|result|results|"
    r"usage|solution|answer|syntax|steps?|e\.g|i\.e|this|that|these|those|the following|to|you|we|it|if|when)\b",
    re.IGNORECASE,
)
_NUMBERED = re.compile(r"^([ \t]*)(\d{1,3})([.)])[ \t]+\S")
_BULLET = re.compile(r"^([ \t]*)([-*+•])[ \t]+\S")
_RULE = re.compile(r"^ {0,3}([-*_])([ \t]*\1){2,}[ \t]*$")
_BOLD_LABEL = re.compile(r"^ {0,3}(\*\*|__)(?=\S)([^*_\n]{1,80}?)(?<=\S)\1[ \t]*:?")
_PLAIN_LABEL = re.compile(r"^ {0,3}([A-Z0-9][^:\n]{0,48}?):(?=[ \t]+\S|[ \t]*$)")
_CONCLUSION = re.compile(
    r"^(in (summary|conclusion|short)|overall|to (summarize|summarise|sum up|conclude)|ultimately|"
    r"by following|remember|all in all|these (tips|steps|strategies|are)|(taken )?together,? (these|they|all)|"
    r"both|with these|following these|whether you)\b",
    re.IGNORECASE,
)
_CONCLUSION_HEADING = re.compile(
    r"^(conclusion|summary|in (summary|conclusion|short)|final (thoughts|words|verdict)|overall|tl;?dr|wrapping up|"
    r"verdict|bottom line|recommendations?)\b", re.IGNORECASE
)
_LINK = re.compile(r"\[([^\]\n]*)\]\([^)\n]*\)")
_MARKDOWN = re.compile(r"\*+|`+|#+|__|[<>|\[\]\"]")
_LEAD_NUMBER = re.compile(r"^(\d{1,3}[.)]|[-*+•])\s+")
_CLAUSE_END = re.compile(r"[.:;!?](\s|$)|\s[-–—]\s|\(")
# Heads and markers (the markers check in stages.py uses the same definitions).
_ITEM_MARK = re.compile(r"(?:\d{1,3}[.)]|[-*+•])[ \t]+")
_LIST_START = re.compile(r"(?:\d{1,3}[.)]|[-*+•])(?:[ \t]|$)")
_HEAD_NUMBER = re.compile(r"(?:#{1,6}[ \t]+)?(?:\*\*|__)?(\d{1,3})[.)](?=[ \t*_]|$)")
_BOLD_LEAD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1(?:[ \t]*:)?")
_WORD = re.compile(r"\S+")
_DASH_AFTER = re.compile(r"[ \t]*[-–—][ \t]")  # " - " right after a bold lead: a separator, as a colon
_DASHES = ("-", "–", "—")
_FUNCTION = frozenset(
    "a an the to of in on at for with by from into onto about as and or nor but so if than that which who whom "
    "without within between through across over under via per against during before after among around upon "
    "whose when where while because is are was were be been can could will would should may might must do does "
    "did has have had this these those its it your you their they our we".split()
)
# A paragraph or item that opens like this continues or refers to what came before it.
_BACK_REFERENCE = re.compile(
    r"^(this|these|that|those|it|its|they|their|he|she|such|first(ly)?|second(ly)?|to begin with|let's|let us|however|but|and|or|so|thus|therefore|hence|also|"
    r"additionally|furthermore|moreover|besides|similarly|likewise|meanwhile|then|next|now|finally|lastly|instead|"
    r"otherwise|still|yet|another|both|consequently|accordingly|nevertheless|nonetheless|despite|here|"
    r"as (mentioned|noted|discussed|stated|shown|described|seen|a result)|in (addition|contrast|particular|fact|"
    r"this|that|short|other words|the same)|on the other hand|for (example|instance)|that said|with (this|that|"
    r"these)|because of (this|that)|the (above|previous|former|latter|same))\b",
    re.IGNORECASE,
)
# A step that needs an earlier one ("Then run it", "the file from step 2").
_ORDER_WORDS = r"then|next|now|after(wards)?|once|finally|lastly|repeat|continue"
_STEP_START = re.compile(rf"^({_ORDER_WORDS}|this|that|it|these)\b", re.IGNORECASE)
# After a label, a pronoun names the label ("**Transit Method**: This method ..."); only order words refer back.
_STEP_AFTER_LABEL = re.compile(rf"^({_ORDER_WORDS})\b", re.IGNORECASE)
_CLOSING_LABEL = re.compile(r"^(conclusion|summary|in (summary|conclusion|short)|overall|final (thoughts|words)|"
                            r"key takeaways?|takeaways?|bottom line)$", re.IGNORECASE)
_STEP_REFERENCE = re.compile(
    r"\b(previous|preceding) (step|command|section|item|point)|\b(last|above) step|\bthe above\b|\bsteps? \d+\b|"
    r"\bas before\b|\bthe same (way|steps?)\b|\bnext step\b",
    re.IGNORECASE,
)
# Who speaks or what is asked, not an aspect: the lines of a dialogue or a Q&A answer each other.
_ROLE_LABEL = re.compile(r"^(question|problem|hint|prompt|response|reply|user|assistant|customer|agent|"
                         r"interviewer|speaker( \w+)?|person [a-z0-9])$", re.IGNORECASE)
_LABEL_LEAD = re.compile(r"^[^:\n]{1,60}:[ \t]*")
_STOPWORDS = _FUNCTION | frozenset(
    "also very more most many much some such other others one two three first second new way ways use used using "
    "make makes made help helps allow allows provide provides include includes including like well good best "
    "important key main often usually generally especially etc there here what how why who not no all any each "
    "every just only even can get gets need needs want wants way lot lots really quite anything something "
    "nothing everything else thing things people someone time times".split()
) | frozenset(  # common verbs: a label names a thing, and "Listening trains" is no label
    f"{v}{s}" for v in "keep remove train give turn add build take show mean let come go say become seem run work "
    "lead bring draw create offer improve reduce increase require ensure support enable affect depend cause find "
    "learn play put set start stop try call feel leave move live believe hold write read stand lose pay meet "
    "change protect prevent boost lower raise save cut".split() for s in ("", "s", "ed", "es")
)
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


# ---------------------------------------------------------------------------------------------- heads


def _balanced(text: str) -> bool:
    """No Markdown span left open (a head must not end inside `code`, **bold** or a [link](...))."""
    return (text.count("`") % 2 == 0 and text.count("**") % 2 == 0 and text.count("__") % 2 == 0
            and text.count('"') % 2 == 0 and text.count("[") == text.count("]")
            and text.count("(") == text.count(")"))


def _plain_head(first: str, pos: int, more: bool) -> int | None:
    """End of a plain head in `first` (marker ends at pos): at most HEAD_WORDS words, cut at a word boundary
    before a parenthesis or a function word, or after clause punctuation or a dash (kept in the head, so that
    the body never starts with "- ")."""
    words = list(_WORD.finditer(first, pos))
    limit = min(len(words) if more else len(words) - 1, MAX_HEAD_WORDS)  # the body keeps >= 1 word
    best: int | None = None
    for k in range(1, limit + 1):
        w = words[k - 1]
        bare = w.group().lower().strip("*_`\"'()[],.;:!?")
        if bare and bare not in _FUNCTION and w.group() not in _DASHES and _balanced(first[pos : w.end()]):
            best = w.end()
        nxt = words[k].group() if k < len(words) else ""
        stop = (w.group()[-1] in ".,;:!?" or k >= HEAD_WORDS or nxt.startswith("(") or nxt in _DASHES
                or (k >= 2 and nxt.lower() in _FUNCTION))
        if stop and best is not None:
            if nxt in _DASHES and best == w.end() and (k + 1 < len(words) or more):
                return words[k].end()  # "Sleep - Get eight hours": the dash goes with the head, not the body
            return best
    return best


def split_head(text: str) -> str | None:
    """The head of an item, section or labelled paragraph (`text` starts at its marker), or None.

    A heading or whole-line bold heading is its line; a list item keeps its marker plus its bold lead
    (`1. **Diet**:`), its `Label:`, its whole first line when that is short and more lines follow, else its
    first words. None when no head fits (the text has no body left after it, or no marker or label).
    """
    first = text.split("\n", 1)[0].rstrip()
    more = bool(text[len(first) :].strip())
    if _HEADING.match(first) or _BOLD_LINE.match(first) or _LABEL_LINE.match(first):
        head: str | None = first
    else:
        m = _ITEM_MARK.match(first)
        pos = m.end() if m else 0
        head = None
        if (b := _BOLD_LEAD.match(first, pos)) and len(b.group(2).split()) <= MAX_BOLD_WORDS:
            # "1. **Zoo** - Home to ...": the dash goes with the head, else the body would start with "- ".
            head = first[: (d.end() - 1 if (d := _DASH_AFTER.match(first, b.end())) else b.end())]
        elif (lab := _PLAIN_LABEL.match(first[pos:])) and _short_label(lab.group(1)):
            head = first[: pos + lab.end()]
        elif m is not None:
            if more and len(first[pos:].split()) <= MAX_TITLE_WORDS and _balanced(first):
                head = first
            elif (end := _plain_head(first, pos, more)) is not None:
                head = first[:end]
    if head is None or not is_head(head) or not text[len(head) :].strip():
        return None
    return head


def _extend(text: str, head: str) -> str | None:
    """The head one word longer (within its line), if it is still a head with a body after it."""
    first = text.split("\n", 1)[0].rstrip()
    w = _WORD.search(first, len(head))
    if w is None:
        return None
    longer = first[: w.end()]
    ok = is_head(longer) and _balanced(longer) and text[len(longer) :].strip() and len(longer.split()) <= MAX_HEAD_WORDS + 1
    return longer if ok else None


def _unique_heads(texts: Sequence[str], heads: list[str]) -> list[str] | None:
    """Heads made unique by extending colliding ones word by word; None when that is not possible."""
    heads = list(heads)
    for _ in range(MAX_HEAD_WORDS):
        seen: dict[str, list[int]] = {}
        for i, h in enumerate(heads):
            seen.setdefault(h.lower(), []).append(i)
        clashes = [ix for ix in seen.values() if len(ix) > 1]
        if not clashes:
            return heads
        for ix in clashes:
            for i in ix:
                longer = _extend(texts[i], heads[i])
                if longer is None:
                    return None
                heads[i] = longer
    return None


def head_number(title: str) -> int | None:
    """The list number a head starts with (`3. ...`, `## 3. ...`, `**3. ...`), else None."""
    m = _HEAD_NUMBER.match(title.strip()) if is_head(title) else None
    return int(m.group(1)) if m else None


def marker_problems(group: Group) -> list[str]:
    """Why the list markers of a group would come out wrong, if they would ([] when fine).

    A branch body must not start with a list marker: markers belong to the head, which the main stream
    writes in reading order (a body that starts on a new line below its head holds that head's own list,
    which is fine). Numbered heads must be consecutive (n, n+1, ...), all of them numbered or none.
    """
    problems: list[str] = []
    numbers: list[int | None] = []
    for i, b in enumerate(group.branches):
        head = is_head(b.title)
        lead = b.text.lstrip(" \t") if head else b.text.lstrip()
        if head and lead[:1] in ("\n", "\r"):
            lead = ""
        if _LIST_START.match(lead):
            problems.append(f"branch {i + 1} ({b.title!r}) starts with the list marker {lead.split()[0]!r}")
        numbers.append(head_number(b.title))
    if any(n is not None for n in numbers):
        if None in numbers:
            problems.append("some heads are numbered and others are not")
        elif any(b != a + 1 for a, b in zip(numbers, numbers[1:], strict=False)):
            problems.append(f"numbered heads are not consecutive: {numbers}")
    return problems


# ---------------------------------------------------------------------------------------------- titles


def title_from(text: str) -> str:
    """A short plain title for an item: its bold lead, its `Label:`, its heading, else its first words.

    Markdown is stripped and the result capped at MAX_TITLE_WORDS words; may be "".
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


_ALPHA_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'’-]*")


def keyphrases(paragraph: str, siblings: Sequence[str] = ()) -> list[str]:
    """Label candidates for a prose paragraph, best first: runs of 1-3 content words of its first sentence,
    favouring words its siblings do not use. Never the paragraph's opening words (a hidden label the body
    then repeats verbatim at its start teaches the model to parrot its title)."""
    text = _MARKDOWN.sub("", _LINK.sub(r"\1", paragraph)).strip()
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    words = list(_ALPHA_WORD.finditer(sentence))
    own: dict[str, int] = {}
    for w in _ALPHA_WORD.findall(text.lower()):
        own[w] = own.get(w, 0) + 1
    other = {w for s in siblings for w in _ALPHA_WORD.findall(s.lower())}

    def score(w: str) -> float:
        return (2.0 if w not in other else 0.5) + 0.3 * min(own.get(w, 0), 3)

    runs: list[list[tuple[int, re.Match[str]]]] = []
    for i, w in enumerate(words):
        content = w.group().lower() not in _STOPWORDS and len(w.group()) > 2
        joined = i > 0 and not sentence[words[i - 1].end() : w.start()].strip()
        if content and runs and joined and runs[-1][-1][0] == i - 1:
            runs[-1].append((i, w))
        elif content:
            runs.append([(i, w)])
    scored: list[tuple[float, int, str]] = []
    for run in runs:
        for a in range(len(run)):
            for b in range(a + 1, min(a + 3, len(run)) + 1):
                if run[a][0] == 0:
                    continue  # the paragraph's own start: a clipped prefix
                phrase = sentence[run[a][1].start() : run[b - 1][1].end()]
                if len(phrase) > MAX_TITLE_CHARS:
                    continue
                s = sum(score(m.group().lower()) for _, m in run[a:b]) / (b - a) + 0.4 * (b - a - 1)
                s += 0.3 * (b == len(run))  # ending where the content words end: more likely a whole noun phrase
                scored.append((-s, run[a][0], phrase[0].upper() + phrase[1:]))
    out: list[str] = []
    for _, _, p in sorted(scored):
        if p.lower() not in (o.lower() for o in out):
            out.append(p)
    return out


# ---------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Item:
    start: int  # char offset of the item's first character (its marker)
    end: int  # char offset just past its last non-blank character
    title: str  # a head (the start of the item's text, shown) or a hidden label
    head: bool = True


@dataclass(frozen=True)
class Run:
    kind: str  # "numbered" | "bullets" | "sections" | "labels" | "paragraphs" | "spans"
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

    def group(self, answer: str) -> Group:
        return Group(tuple(
            Branch(it.title, answer[it.start + len(it.title) : it.end]) if it.head
            else Branch(it.title, answer[it.start : it.end])
            for it in self.items
        ))


def _drop_marker(text: str) -> str:
    """The text without its leading list marker ("1. ", "- "); a marker-like "* " further on stays."""
    return text[m.end() :] if (m := _ITEM_MARK.match(text)) else text


def _unemphasized(text: str) -> str:
    """The text without bold markers, so that "**Design**: ..." reads as "Design: ..."."""
    return text.replace("**", "").replace("__", "")


def _refers_back(texts: Sequence[str]) -> bool:
    """Whether a later item needs an earlier one (sequential steps stay serial)."""
    for t in texts[1:]:
        lead = _unemphasized(_drop_marker(t.lstrip())).lstrip()
        body = _LABEL_LEAD.sub("", lead, count=1)  # "Design: Once the requirements are gathered, ..."
        if _STEP_START.match(lead) or _STEP_AFTER_LABEL.match(body) or _STEP_REFERENCE.search(t):
            return True
    return False


def head_run(kind: str, answer: str, spans: Sequence[tuple[int, int]]) -> Run | None:
    """A run whose items all get heads, or None (no head fits, heads cannot be made unique, the markers
    would come out wrong, or a later item refers back to an earlier one)."""
    texts = [answer[s:e] for s, e in spans]
    if len(texts) < 2 or _refers_back(texts):
        return None
    found = [split_head(t) for t in texts]
    if any(h is None for h in found):
        return None
    heads = _unique_heads(texts, [h for h in found if h is not None])
    if heads is None:
        return None
    run = Run(kind, tuple(Item(s, e, h) for (s, e), h in zip(spans, heads, strict=True)))
    return None if marker_problems(run.group(answer)) else run


def _label_run(answer: str, spans: Sequence[tuple[int, int]]) -> Run | None:
    """Prose paragraphs under hidden keyphrase labels, or None when they cannot all get a distinct one."""
    texts = [answer[s:e] for s, e in spans]
    titles: list[str] = []
    for i, t in enumerate(texts):
        options = [p for p in keyphrases(t, texts[:i] + texts[i + 1 :]) if p.lower() not in map(str.lower, titles)]
        if not options:
            return None
        titles.append(options[0])
    return Run("paragraphs", tuple(Item(s, e, t, head=False) for (s, e), t in zip(spans, titles, strict=True)))
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
        if marker is None and line.indent <= indent and _CONCLUSION.match(line.text.lstrip("*_ ")):
            break  # a closing line ("By following these steps, ...") is the answer's, even right under an item
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
        if len(spans) >= 2 and (run := head_run(kind, text, spans)) is not None:
            runs.append(run)
        i = max(end, i + 1)
    return runs, covered


def _section_runs(text: str, lines: Sequence[_Line], covered: set[int], lo: int, hi: int) -> list[Run]:
    """Runs of sibling headed sections in lines[lo:hi], recursively (sub-sections are inner runs)."""
    heads = [(k, r) for k in range(lo, hi) if k not in covered and (r := _section_rank(lines[k])) is not None]
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
    if rank == LABEL_RANK and any(lines[k].fence for k in range(tops[0], stop)):
        return runs  # "Code:" / "Output:"-like label lines: what follows them depends on each other
    spans = [(lines[a].content_start, _last_text(lines, a, b)) for a, b in zip(tops, [*tops[1:], stop], strict=True)]
    run = head_run("sections", text, spans)
    return runs if run is None else [run, *runs]


def _section_rank(line: _Line) -> int | None:
    """Rank of a section heading: '#'s, whole-line bold, or a short `Label:` line (not a list item)."""
    if (h := _heading(line)) is not None:
        return h[0]
    m = _LABEL_LINE.match(line.text) if not line.fence else None
    if m is not None and len(m.group(1).split()) <= 4 and _good_label(m.group(1)):
        return LABEL_RANK
    return None


def _short_label(label: str) -> bool:
    return len(label.split()) <= MAX_TITLE_WORDS and not re.search(r"[.!?]\s|//|\"", label)


def _good_label(label: str) -> bool:
    """A short label line, not a sentence or an intro to code ("Here is the code:", "Output:")."""
    return _short_label(label) and not _NOT_A_LABEL_LINE.match(label)


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




def _paragraphs(lines: Sequence[_Line], covered: set[int]) -> tuple[list[tuple[int, int]], set[int]]:
    """Blank-line-separated paragraphs outside lists and headings ([first, stop) line indices), and the
    indices of those preceded by a list, heading or rule (a run of paragraphs never crosses one)."""
    paragraphs: list[tuple[int, int]] = []
    breaks: set[int] = set()
    k = 0
    while k < len(lines):
        line = lines[k]
        if line.blank:
            k += 1
            continue
        if k in covered or _is_break(line):
            breaks.add(len(paragraphs))
            k += 1
            continue
        first = k
        while k < len(lines) and not lines[k].blank and k not in covered and not _is_break(lines[k]):
            k = (lines[k].fence_end if lines[k].fence_end >= 0 else k) + 1
        paragraphs.append((first, k))
    return paragraphs, breaks


def _consecutive(paragraphs: Sequence[tuple[int, int]], breaks: set[int], ok: Callable[[int], bool],
                 apart: Callable[[int, int], bool] = lambda a, b: False) -> list[list[int]]:
    """Maximal runs (>= 2) of paragraph indices that pass `ok`, cut at breaks and where `apart(prev, p)`."""
    runs: list[list[int]] = []
    current: list[int] = []
    for p in range(len(paragraphs)):
        if p in breaks or not ok(p) or (current and apart(current[-1], p)):
            if len(current) >= 2:
                runs.append(current)
            current = []
        if ok(p):
            current.append(p)
    if len(current) >= 2:
        runs.append(current)
    return runs


def _label_runs(text: str, lines: Sequence[_Line], covered: set[int]) -> list[Run]:
    """Runs of consecutive labelled paragraphs outside lists and headings."""
    paragraphs, breaks = _paragraphs(lines, covered)

    def ok(p: int) -> bool:  # a labelled paragraph, not a closing one ("**Conclusion**:") that sums up the others
        first = lines[paragraphs[p][0]]
        label = _LABEL_LEAD.match(_unemphasized(first.text.strip()))
        name = _drop_marker(label.group(0).strip(" :\t")) if label else ""
        closing = _CLOSING_LABEL.match(name) is not None
        return _is_labelled(first, paragraphs[p][1] - paragraphs[p][0]) and not closing

    runs = []
    for ps in _consecutive(paragraphs, breaks, ok):
        spans = [(lines[a].content_start, _last_text(lines, a, b)) for a, b in (paragraphs[p] for p in ps)]
        if (run := head_run("labels", text, spans)) is not None:
            runs.append(run)
    return runs


def _line_label(line: _Line) -> str | None:
    """The label of a line that opens with a bold label and goes on after it ("**Plot:** A narrative ...",
    "**1. Zoo** - Home to ..."), else None. The bold needs a colon or a dash after it: a bold word at a
    sentence's start is emphasis. Plain "Label: text" lines are too often sentences or echoed instructions
    ("One short opening sentence: ...") to count. Labels with no word ("**1.**"), intros to code or answers
    and roles ("**User:**") are none."""
    if line.fence or _list_marker(line) is not None or _is_break(line):
        return None
    m = _BOLD_LABEL.match(line.text)
    if m is None or not (m.group(0).rstrip("*_ \t").endswith(":") or _DASH_AFTER.match(line.text, m.end())):
        return None
    label = _drop_marker(m.group(2).strip(" :"))  # "**1. Plot:**" names "Plot"
    ok = (line.text[m.end() :].strip() and re.search(r"[A-Za-z]{2}", label) and _good_label(label)
          and not _ROLE_LABEL.match(label) and not _CLOSING_LABEL.match(label))
    return label if ok else None


def _line_label_runs(text: str, lines: Sequence[_Line], covered: set[int]) -> list[Run]:
    """Runs of adjacent one-line labelled items with no blank line between them:
    "Key ideas include:\\n**Plot:** ...\\n**Setting:** ...". Each item is its line; a line without a label
    ends the run (it is the answer's closing line, not the last item's).

    Serial: a label used twice in the answer (a dialogue "Alice: ... Bob: ... Alice: ...", or repeated pairs
    "Myth: ... Fact: ..." whose second line answers the first), an item ending with ':' (what it introduces
    follows below it), and a run where an item names an earlier item's label ("Length: 6 / Width: 4 /
    Perimeter: 2 * (length + width)")."""
    found = [None if k in covered else _line_label(line) for k, line in enumerate(lines)]
    uses: dict[str, int] = {}
    for label in found:
        if label is not None:
            uses[label.lower()] = uses.get(label.lower(), 0) + 1
    runs: list[Run] = []
    k = 0
    while k < len(lines):
        j = k
        while j < len(lines) and found[j] is not None:
            j += 1
        labels = [label.lower() for label in found[k:j] if label is not None]
        bodies = [lines[i].text.rstrip().lower() for i in range(k, j)]
        named = any(re.search(rf"\b{re.escape(labels[a])}\b", bodies[b].partition(labels[b])[2])
                    for b in range(len(labels)) for a in range(b))
        if (len(labels) >= 2 and all(uses[n] == 1 for n in labels) and not named
                and not any(body.endswith(":") for body in bodies)):
            spans = [(lines[i].content_start, _last_text(lines, i, i + 1)) for i in range(k, j)]
            if (run := head_run("labels", text, spans)) is not None:
                runs.append(run)
        k = j + 1
    return runs


def _is_labelled(line: _Line, n_lines: int) -> bool:
    if line.fence:
        return False
    if _BOLD_LABEL.match(line.text):
        return True
    m = _PLAIN_LABEL.match(line.text)
    if m is None or not _short_label(m.group(1)):
        return False
    # "Label:" alone on its line needs a body below it ("Here are some tips:" + a list is not a label).
    return bool(line.text[m.end() :].strip()) or n_lines > 1


def _prose_runs(text: str, lines: Sequence[_Line], covered: set[int]) -> list[Run]:
    """Runs of >= 2 prose paragraphs that each develop one point, under hidden keyphrase labels."""
    paragraphs, breaks = _paragraphs(lines, covered)
    spans = [(lines[a].content_start, _last_text(lines, a, b)) for a, b in paragraphs]
    first_text = next((k for k, line in enumerate(lines) if not line.blank), -1)

    def words(p: int) -> int:
        return word_count(text[spans[p][0] : spans[p][1]])

    def ok(p: int) -> bool:
        a, b = paragraphs[p]
        body = text[spans[p][0] : spans[p][1]]
        lead = body.lstrip("*_ ")
        return (
            a != first_text  # the answer's opening paragraph introduces what follows
            and not any(lines[k].fence for k in range(a, b))
            and not _is_labelled(lines[a], b - a)
            and words(p) >= PARA_MIN_WORDS
            and not _CONCLUSION.match(lead)
            and not _BACK_REFERENCE.match(lead)
            and not body.rstrip().endswith((":", "?"))
        )

    def apart(p: int, q: int) -> bool:
        return max(words(p), words(q)) > PARA_MAX_RATIO * min(words(p), words(q))

    runs = []
    for ps in _consecutive(paragraphs, breaks, ok, apart):
        if (run := _label_run(text, [spans[p] for p in ps])) is not None:
            runs.append(run)
    return runs


def find_runs(answer: str) -> list[Run]:
    """Every candidate run of >= 2 parallel items in the answer, outer and inner ones (they may overlap)."""
    lines = _lines(answer)
    lists, covered = _list_runs(answer, lines)
    runs = [*lists, *_section_runs(answer, lines, covered, 0, len(lines)), *_label_runs(answer, lines, covered),
            *_line_label_runs(answer, lines, covered), *_prose_runs(answer, lines, covered)]
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
    An answer that itself holds markup tags is refused even where they would land in a head title.
    """
    validate(Document((Serial(answer),)))
    segments: list[Segment] = []
    pos = 0
    for run in sorted(runs, key=lambda r: r.start):
        before = answer[pos : run.start]
        before = before[: before.rfind("\n") + 1]  # drop the run's indentation (whitespace only)
        before = before[1:] if pos and before.startswith("\n") else before
        before = before[:-1] if before.endswith("\n") else before
        if before.strip():
            segments.append(Serial(before))
        segments.append(run.group(answer))
        pos = run.end
    after = answer[pos:]
    after = after[1:] if after.startswith("\n") else after
    if after.strip():
        segments.append(Serial(after))
    return render(Document(tuple(segments)))


class RuleRewriter:
    """Rewriter backend from lists, headings, labelled and prose paragraphs; deterministic, no model needed.

    `min_words`: answers shorter than this (whitespace words) stay serial.
    """

    name = "rules"

    def __init__(self, strategies: Sequence[str] = tuple(STRATEGIES), *, min_words: int = MIN_ANSWER_WORDS) -> None:
        unknown = [s for s in strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"unknown rule strategies {unknown}; choose from {list(STRATEGIES)}")
        self.strategies = tuple(strategies)
        self.min_words = min_words

    def candidates(self, answer: str, n: int) -> list[Candidate]:
        """Up to n distinct candidates, one per strategy that finds something (synchronous core)."""
        if n <= 0:
            return []
        if word_count(answer) < self.min_words:
            note = f"answer under {self.min_words} words: kept serial"
            return [Candidate(raw=note, has_parallel=False, markup=None, source=self.name)]
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
            note = "no parallel structure found (lists, headed sections, labelled or prose paragraphs)"
            out.append(Candidate(raw=note, has_parallel=False, markup=None, source=self.name))
        return out

    async def rewrite(self, sample: Sample, n: int) -> list[Candidate]:
        return self.candidates(sample.answer, n)
