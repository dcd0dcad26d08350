"""Parallel markup: `<branchgroup><branch title="...">...</branch></branchgroup>` (DESIGN.md section 2).

Canonical markup (what `render` writes)::

    serial text
    <branchgroup>
    <branch title="T1">body 1</branch>
    <branch title="T2">body 2</branch>
    </branchgroup>
    serial text

Tags. Only these character sequences are markup (case-sensitive); every other `<...` is text, so an answer
may say `git checkout <branch>` or `<branches>`:

- `<branchgroup>` and `</branchgroup>`, `</branch>` (whitespace allowed before `>`), and
  `<branch title="...">` (also `title='...'`; whitespace allowed around `=` and before `>`);
- anything else starting `<branchgroup`, `</branchgroup` or `</branch` at a word boundary, or `<branch`
  + whitespace + `title` at a word boundary, is a malformed tag (an error, never text).

Text that reads as a tag. Serial text and branch bodies may hold anything (an answer about this very markup,
or a model writing `</branch>` as words). `render` writes the `<` that starts such a sequence as `&lt;`, and
`parse` reads `&lt;` back as `<` there; to stay reversible, a text that already holds `&lt;` (or `&amp;lt;`,
...) before such a name gets one more `amp;` (`&amp;lt;branchgroup`), which `parse` removes again. Nothing else
is escaped: `a < b && c`, `&amp;` or `&lt;b>` are verbatim.

Whitespace rules (exact; `parse(render(doc)) == doc.normalized()` for every valid `doc`):

- `render` joins the segments with exactly one "\\n"; a group is `<branchgroup>` "\\n", then per branch
  `<branch title="T">` + body + `</branch>` "\\n", then `</branchgroup>`. No trailing newline.
- `parse` keeps serial text and branch bodies verbatim, except that it removes ONE "\\n" (only "\\n", not
  "\\r\\n") directly before `<branchgroup>` and ONE "\\n" directly after `</branchgroup>`, where present.
  Between `<branchgroup>`, the branches and `</branchgroup>` only whitespace is allowed, and it is
  dropped. Titles are unescaped and stripped of surrounding whitespace. Empty serial text is dropped.
- `flatten` joins the serial texts and the non-empty visible branches (`Branch.visible`: a head title and its
  body, or the body alone under a hidden label) of the normalised document, in order, with "\\n". For markup whose tags sit on their own lines this gives back the original text exactly;
  otherwise it is equal up to whitespace (`same_text`).

Normalised form (`Document.normalized`): adjacent Serial segments concatenated, empty ones dropped,
titles stripped; branch bodies are never touched. `parse` and `from_token_text` return normalised
documents; `render` and `to_token_text` normalise before writing.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aspd.tokens import DEFAULT_TOKENS, SpecialTokens, is_head

__all__ = [
    "TITLE_SEPARATOR",
    "Branch",
    "Document",
    "Group",
    "MarkupError",
    "ParallelStats",
    "Segment",
    "Serial",
    "abn",
    "branch_body",
    "dp",
    "flatten",
    "is_head",
    "from_token_text",
    "parallel_stats",
    "parse",
    "ppd",
    "render",
    "same_text",
    "similarity",
    "to_token_text",
    "validate",
    "word_count",
]


@dataclass(frozen=True)
class Serial:
    text: str


@dataclass(frozen=True)
class Branch:
    """One branch. A head title (`is_head`: `1. **Diet**:`) is shown, and `text` continues right after it
    (leading whitespace kept: " Eat more..."); any other title is a hidden label and `text` is the whole body."""

    title: str
    text: str

    @property
    def visible(self) -> str:
        """What the reader sees of this branch."""
        return self.title.strip() + self.text if is_head(self.title) else self.text


def branch_body(title: str, text: str) -> str:
    """A decoded branch body in markup form: after a head its leading whitespace is content; else stripped."""
    return text.rstrip() if is_head(title) else text.strip()


@dataclass(frozen=True)
class Group:
    branches: tuple[Branch, ...]

    @property
    def titles(self) -> tuple[str, ...]:
        return tuple(b.title for b in self.branches)


Segment = Serial | Group


@dataclass(frozen=True)
class Document:
    segments: tuple[Segment, ...]

    @property
    def groups(self) -> list[Group]:
        return [s for s in self.segments if isinstance(s, Group)]

    def normalized(self) -> Document:
        """Canonical form: adjacent Serial merged, empty Serial dropped, titles stripped.

        Two documents with the same markup rendering have the same normalised form; branch bodies and
        non-empty serial text are kept verbatim (whitespace in them is content).
        """
        out: list[Segment] = []
        for seg in self.segments:
            if isinstance(seg, Serial):
                if not seg.text:
                    continue
                if out and isinstance(out[-1], Serial):
                    out[-1] = Serial(out[-1].text + seg.text)
                else:
                    out.append(seg)
            else:
                out.append(Group(tuple(Branch(b.title.strip(), b.text) for b in seg.branches)))
        return Document(tuple(out))


class MarkupError(ValueError):
    """Invalid markup or token text.

    `position` is the character offset in the parsed string (None for documents built in code, which
    `validate` describes by segment and branch index instead); `line` and `column` are 1-based.
    """

    def __init__(
        self,
        message: str,
        position: int | None = None,
        source: str | None = None,
        *,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.message = message
        self.position = position
        if position is not None and source is not None:
            line, column = _line_col(source, position)
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line is not None and self.column is not None:
            return f"{self.line}:{self.column}: {self.message}"
        if self.position is not None:
            return f"offset {self.position}: {self.message}"
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep position/line/column across pickling (multiprocessing workers in the pipeline).
        return (_rebuild_error, (self.message, self.position, self.line, self.column))


def _rebuild_error(message: str, position: int | None, line: int | None, column: int | None) -> MarkupError:
    return MarkupError(message, position, line=line, column=column)


def _line_col(source: str, position: int) -> tuple[int, int]:
    line = source.count("\n", 0, position) + 1
    column = position - (source.rfind("\n", 0, position) + 1) + 1
    return line, column


def _at(source: str, position: int) -> str:
    line, column = _line_col(source, position)
    return f"{line}:{column}"


# ---------------------------------------------------------------------------------------------------------
# Markup


# Anything the parser treats as a tag. Narrow on purpose: `<branch>` or `<branch-name>` stay text.
_TAG_LIKE = re.compile(
    r"(?P<open_group><branchgroup\b)|(?P<close_group></branchgroup\b)"
    r"|(?P<close_branch></branch\b)|(?P<open_branch><branch\s+title\b)"
)
_OPEN_GROUP = re.compile(r"<branchgroup\s*>")
_CLOSE_GROUP = re.compile(r"</branchgroup\s*>")
_CLOSE_BRANCH = re.compile(r"</branch\s*>")
_BRANCH_HEAD = re.compile(r"<branch\s+title\s*")
_ENTITY = re.compile(r"&(quot|amp|lt|gt|apos);")
_ENTITIES = {"quot": '"', "amp": "&", "lt": "<", "gt": ">", "apos": "'"}


def _unescape(value: str) -> str:
    # Only the five XML entities; any other '&' is literal (titles like "R&D" are common).
    return _ENTITY.sub(lambda m: _ENTITIES[m.group(1)], value)


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


# What follows the '<' of a tag-like sequence, and that '<' written in text: escaped as "&lt;", and an existing
# "&lt;" / "&amp;lt;" / ... before it with one more "amp;" (so that parse's one-level unescape is exact). The
# end of a text counts as a word boundary, so a text ending in "</branch" is escaped: render may put "<" or
# "\n" after it.
_TAG_NAME = r"(?=branchgroup\b|/branchgroup\b|/branch\b|branch\s+title\b)"
_TEXT_ESCAPE = re.compile(r"&(?:amp;)*lt;" + _TAG_NAME + "|<" + _TAG_NAME)
_TEXT_UNESCAPE = re.compile(r"&(?:amp;)*lt;" + _TAG_NAME)


def _escape_text(text: str) -> str:
    return _TEXT_ESCAPE.sub(lambda m: "&lt;" if m.group() == "<" else "&amp;" + m.group()[1:], text)


def _unescape_text(text: str) -> str:
    return _TEXT_UNESCAPE.sub(lambda m: "<" if m.group() == "&lt;" else "&" + m.group()[5:], text)


def _title_problem(title: str) -> str | None:
    if not title:
        return "empty title"
    if "\n" in title or "\r" in title:
        return f"title {title!r} contains a line break"
    return None


def parse(text: str) -> Document:
    """Parse markup strictly into a normalised Document (whitespace rules: module docstring)."""
    segments: list[Segment] = []
    serial_start = 0  # where the pending serial text starts
    group_pos: int | None = None  # offset of the open <branchgroup>
    branch_pos: int | None = None  # offset of the open <branch ...>
    branches: list[Branch] = []
    title_pos: dict[str, int] = {}
    title = ""
    body_start = 0
    gap_start = 0  # inside a group: where the whitespace-only gap before the next tag starts

    def error(message: str, position: int) -> MarkupError:
        return MarkupError(message, position, text)

    def check_gap(stop: int) -> None:
        gap = text[gap_start:stop]
        rest = gap.lstrip()
        if rest:
            where = stop - len(rest)
            if rest.startswith("<branch"):
                raise error('<branch> tag without a title attribute (write <branch title="...">)', where)
            raise error(
                "text between branches inside a <branchgroup> (only whitespace is allowed there)", where
            )

    def unclosed_branch(found: str) -> MarkupError:
        assert branch_pos is not None
        return error(f"unclosed <branch title={title!r}>: {found} before its </branch>", branch_pos)

    pos = 0
    while (m := _TAG_LIKE.search(text, pos)) is not None:
        p, kind = m.start(), m.lastgroup
        if kind == "open_group":
            tag = _OPEN_GROUP.match(text, p)
            if tag is None:
                raise error("malformed <branchgroup> tag (it takes no attributes: write <branchgroup>)", p)
            if branch_pos is not None:
                raise error("nested <branchgroup> inside a <branch> (groups do not nest)", p)
            if group_pos is not None:
                raise error(
                    f"nested <branchgroup> (the group opened at {_at(text, group_pos)} is still open)", p
                )
            serial = text[serial_start:p]
            serial = serial[:-1] if serial.endswith("\n") else serial
            if serial:
                segments.append(Serial(_unescape_text(serial)))
            group_pos, branches, title_pos = p, [], {}
            gap_start = pos = tag.end()
        elif kind == "close_group":
            tag = _CLOSE_GROUP.match(text, p)
            if tag is None:
                raise error("malformed </branchgroup> tag", p)
            if branch_pos is not None:
                raise unclosed_branch(f"found </branchgroup> at {_at(text, p)}")
            if group_pos is None:
                raise error("stray </branchgroup> without an open <branchgroup>", p)
            check_gap(p)
            if len(branches) < 2:
                raise error(
                    f"<branchgroup> has {len(branches)} branch(es); a group needs at least 2", group_pos
                )
            segments.append(Group(tuple(branches)))
            group_pos = None
            pos = tag.end()
            serial_start = pos + 1 if text.startswith("\n", pos) else pos
        elif kind == "close_branch":
            tag = _CLOSE_BRANCH.match(text, p)
            if tag is None:
                raise error("malformed </branch> tag", p)
            if branch_pos is None:
                if group_pos is not None:
                    check_gap(p)  # `<branch>x</branch>`: report the title-less tag, not the stray close
                raise error("stray </branch> without an open <branch>", p)
            branches.append(Branch(title, _unescape_text(text[body_start:p])))
            branch_pos = None
            gap_start = pos = tag.end()
        else:  # open_branch
            raw_title, end = _parse_branch_tag(text, p)
            if branch_pos is not None:
                raise unclosed_branch(f"found another <branch> at {_at(text, p)} (branches do not nest)")
            if group_pos is None:
                raise error("<branch> outside a <branchgroup>", p)
            check_gap(p)
            title = _unescape(raw_title).strip()
            problem = _title_problem(title)
            if problem is not None:
                raise error(problem, p)
            if title in title_pos:
                raise error(
                    f"duplicate title {title!r} in one group (first used at {_at(text, title_pos[title])})", p
                )
            title_pos[title] = branch_pos = p
            body_start = pos = end
    if branch_pos is not None:
        raise unclosed_branch("reached the end of the input")
    if group_pos is not None:
        raise error("unclosed <branchgroup>: reached the end of the input before </branchgroup>", group_pos)
    if serial_start < len(text):
        segments.append(Serial(_unescape_text(text[serial_start:])))
    return Document(tuple(segments))


def _parse_branch_tag(text: str, p: int) -> tuple[str, int]:
    """Read `<branch title="...">` at p; return the raw (still escaped) title and the tag's end."""
    head = _BRANCH_HEAD.match(text, p)
    assert head is not None  # _TAG_LIKE matched here
    i = head.end()
    if not text.startswith("=", i):
        raise MarkupError('malformed title attribute: expected title="..."', i, text)
    i = _skip_spaces(text, i + 1)
    quote = text[i : i + 1]
    if quote not in ('"', "'"):
        raise MarkupError('malformed title attribute: the value must be quoted (title="...")', i, text)
    close = text.find(quote, i + 1)
    newline = text.find("\n", i + 1)
    if close < 0 or 0 <= newline < close:
        # Titles are one line, so a line break means the quote was never closed.
        raise MarkupError("unterminated title attribute (missing closing quote on this line)", i, text)
    end = _skip_spaces(text, close + 1)
    if not text.startswith(">", end):
        raise MarkupError("malformed <branch> tag: expected '>' after the title attribute", end, text)
    return text[i + 1 : close], end + 1


def _skip_spaces(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def validate(doc: Document) -> None:
    """Raise MarkupError if `doc` (e.g. built in code) breaks the markup rules.

    Checks: segments are Serial or Group; a group has >= 2 branches; titles are non-empty after stripping,
    one line, and unique within their group (after stripping). Texts may hold anything (tag-like text is
    escaped by `render`). Positions are None; the message names the segment and branch index.
    """
    if not isinstance(doc, Document):
        raise MarkupError(f"expected a Document, got {type(doc).__name__}")
    for i, seg in enumerate(doc.segments):
        if isinstance(seg, Serial):
            _check_str(seg.text, f"segment {i} (serial) text")
        elif isinstance(seg, Group):
            if len(seg.branches) < 2:
                raise MarkupError(
                    f"segment {i}: group has {len(seg.branches)} branch(es); a group needs at least 2"
                )
            seen: dict[str, int] = {}
            for j, b in enumerate(seg.branches):
                where = f"segment {i}, branch {j}"
                if not isinstance(b, Branch):
                    raise MarkupError(f"{where}: expected a Branch, got {type(b).__name__}")
                _check_str(b.title, f"{where} title")
                _check_str(b.text, f"{where} text")
                title = b.title.strip()
                problem = _title_problem(title)
                if problem is not None:
                    raise MarkupError(f"{where}: {problem}")
                if title in seen:
                    raise MarkupError(f"{where}: duplicate title {title!r} (same as branch {seen[title]})")
                seen[title] = j
        else:
            raise MarkupError(f"segment {i}: expected Serial or Group, got {type(seg).__name__}")


def _check_str(value: object, where: str) -> None:
    if not isinstance(value, str):
        raise MarkupError(f"{where} must be str, got {type(value).__name__}")


def render(doc: Document) -> str:
    """Canonical markup of `doc` (validated, then normalised); see the module docstring."""
    validate(doc)
    return "\n".join(_render_segment(s) for s in doc.normalized().segments)


def _render_segment(seg: Segment) -> str:
    if isinstance(seg, Serial):
        return _escape_text(seg.text)
    lines = "".join(f'<branch title="{_escape(b.title)}">{_escape_text(b.text)}</branch>\n' for b in seg.branches)
    return f"<branchgroup>\n{lines}</branchgroup>"


def flatten(doc: Document) -> str:
    """The answer without markup: serial texts and non-empty visible branches (head + body) of the
    normalised doc, "\\n"-joined."""
    pieces: list[str] = []
    for seg in doc.normalized().segments:
        if isinstance(seg, Serial):
            pieces.append(seg.text)
        else:
            pieces.extend(v for b in seg.branches if (v := b.visible))
    return "\n".join(pieces)


def same_text(a: str, b: str) -> bool:
    """Equal up to whitespace: same words once every whitespace run is one space and the ends are stripped."""
    return a.split() == b.split()


def similarity(a: str, b: str) -> float:
    """Similarity in [0, 1]: difflib ratio over the whitespace-separated words (1.0 for two blank texts)."""
    wa, wb = a.split(), b.split()
    if not wa and not wb:
        return 1.0
    # Words, not characters: linear-ish on long answers, and autojunk off so frequent words still count.
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()


# ---------------------------------------------------------------------------------------------------------
# Model token format (as text; ids-level tokenization lives elsewhere)

TITLE_SEPARATOR = ": "
"""Between a label title and its body in the token format: `<|branch|>T: body<|/branch|>`. A head title is
followed by its body directly (`<|branch|>1. **Diet**: Eat more<|/branch|>`, the body being " Eat more")."""


def _separator(title: str) -> str:
    return "" if is_head(title) else TITLE_SEPARATOR


def _check_tokens(tokens: SpecialTokens) -> None:
    names = tokens.all()
    if any(not t for t in names) or len(set(names)) != len(names):
        raise ValueError(f"special tokens must be non-empty and distinct: {names}")


def _check_no_special(text: str, tokens: SpecialTokens, where: str) -> None:
    for t in tokens.all():
        at = text.find(t)
        if at >= 0:
            raise MarkupError(f"{where}: text contains the special token {t!r} at offset {at}")


def to_token_text(doc: Document, tokens: SpecialTokens = DEFAULT_TOKENS) -> str:
    """The model's token format as one string (for reading and tests; tokenize per segment, not this).

    Per group: `<|title|>T1<|/title|>...<|para|><|branch|>T1: B1<|/branch|>...<|/para|>`, with the serial
    texts verbatim before and after, and nothing in between.
    """
    validate(doc)
    _check_tokens(tokens)
    norm = doc.normalized()
    out: list[str] = []
    for i, seg in enumerate(norm.segments):
        if isinstance(seg, Serial):
            _check_no_special(seg.text, tokens, f"segment {i} (serial)")
            out.append(seg.text)
            continue
        for j, b in enumerate(seg.branches):
            _check_no_special(b.title, tokens, f"segment {i}, branch {j} title")
            _check_no_special(b.text, tokens, f"segment {i}, branch {j}")
        out.extend(f"{tokens.title}{b.title}{tokens.title_end}" for b in seg.branches)
        out.append(tokens.para)
        out.extend(
            f"{tokens.branch}{b.title}{_separator(b.title)}{b.text}{tokens.branch_end}" for b in seg.branches
        )
        out.append(tokens.para_end)
    text = "".join(out)
    # Custom token strings can still collide with neighbouring text (a text ending in a token's first
    # characters); reading the result back is the one check that covers every case.
    try:
        back = from_token_text(text, tokens)
    except MarkupError as e:
        raise MarkupError(f"document cannot be written unambiguously with these tokens: {e.message}") from e
    if back != norm:
        raise MarkupError("document cannot be written unambiguously with these tokens")
    return text


def from_token_text(text: str, tokens: SpecialTokens = DEFAULT_TOKENS) -> Document:
    """Parse the token format strictly back into a normalised Document.

    Titles must be announced (>= 2, non-empty, unique) before `<|para|>`, then the branches must follow in
    the announced order, each starting with its title + ": " (a head title: the title alone). No text may stand between the control tokens
    of a group. Serial text is kept verbatim.
    """
    _check_tokens(tokens)
    role = {
        tokens.title: "title",
        tokens.title_end: "title_end",
        tokens.branch: "branch",
        tokens.branch_end: "branch_end",
        tokens.para: "para",
        tokens.para_end: "para_end",
    }
    # Longest first, so a token that is a prefix of another never wins.
    pattern = re.compile("|".join(re.escape(t) for t in sorted(role, key=len, reverse=True)))
    toks = [(m.start(), m.end(), role[m.group()]) for m in pattern.finditer(text)]
    n = len(toks)

    def error(message: str, position: int) -> MarkupError:
        return MarkupError(message, position, text)

    def expect_adjacent(prev_end: int, start: int) -> None:
        if start != prev_end:
            raise error("text between the control tokens of a parallel group", prev_end)

    stray = {
        "title_end": f"stray {tokens.title_end} without {tokens.title}",
        "branch": f"{tokens.branch} outside a parallel group (no titles announced)",
        "branch_end": f"stray {tokens.branch_end} outside a parallel group",
        "para": f"{tokens.para} without announced titles",
        "para_end": f"stray {tokens.para_end} outside a parallel group",
    }
    segments: list[Segment] = []
    cursor = 0
    k = 0
    while k < n:
        group_pos, _, kind = toks[k]
        if kind != "title":
            raise error(stray[kind], group_pos)
        if group_pos > cursor:
            segments.append(Serial(text[cursor:group_pos]))
        # Titles: <|title|>T<|/title|> repeated, then <|para|>.
        raw_titles: list[str] = []
        title_pos: dict[str, int] = {}
        while True:
            pos, start, _ = toks[k]
            if k + 1 >= n or toks[k + 1][2] != "title_end":
                raise error(f"unclosed {tokens.title}", pos)
            stop, prev_end, _ = toks[k + 1]
            raw = text[start:stop]
            title = raw.strip()
            problem = _title_problem(title)
            if problem is not None:
                raise error(problem, pos)
            if title in title_pos:
                raise error(f"duplicate title {title!r} (first at {_at(text, title_pos[title])})", pos)
            title_pos[title] = pos
            raw_titles.append(raw)
            k += 2
            if k >= n:
                raise error(f"titles announced but no {tokens.para} follows", group_pos)
            nxt, nxt_end, nxt_kind = toks[k]
            if nxt != prev_end:
                raise error(
                    f"text after {tokens.title_end} (expected {tokens.title} or {tokens.para})", prev_end
                )
            if nxt_kind == "para":
                break
            if nxt_kind != "title":
                raise error(f"expected {tokens.title} or {tokens.para} after {tokens.title_end}", nxt)
        para_pos, prev_end = nxt, nxt_end
        k += 1
        if len(raw_titles) < 2:
            raise error(f"group announces {len(raw_titles)} title(s); a group needs at least 2", group_pos)
        # Branches, in the announced order.
        branches: list[Branch] = []
        for b, raw in enumerate(raw_titles):
            if k >= n:
                raise error(
                    f"input ended after {b} of {len(raw_titles)} branches (no {tokens.para_end})", para_pos
                )
            pos, start, kind = toks[k]
            expect_adjacent(prev_end, pos)
            if kind == "para_end":
                raise error(f"{tokens.para_end} after {b} of {len(raw_titles)} announced branches", pos)
            if kind != "branch":
                raise error(f"expected {tokens.branch} for branch {b + 1} of {len(raw_titles)}", pos)
            if k + 1 >= n or toks[k + 1][2] != "branch_end":
                raise error(f"unclosed {tokens.branch}", pos)
            stop, prev_end, _ = toks[k + 1]
            prefix = raw + _separator(raw)
            if not text.startswith(prefix, start, stop):
                raise error(
                    f"branch {b + 1} must start with its announced title {prefix!r} (branches follow the titles in order)",
                    start,
                )
            branches.append(Branch(raw.strip(), text[start + len(prefix) : stop]))
            k += 2
        if k >= n:
            raise error(f"unclosed parallel group: no {tokens.para_end} after the last branch", para_pos)
        pos, end, kind = toks[k]
        expect_adjacent(prev_end, pos)
        if kind == "branch":
            raise error(f"more branches than the {len(raw_titles)} announced titles", pos)
        if kind != "para_end":
            raise error(f"expected {tokens.para_end} after the last branch", pos)
        segments.append(Group(tuple(branches)))
        cursor = end
        k += 1
    if cursor < len(text):
        segments.append(Serial(text[cursor:]))
    return Document(tuple(segments))


# ---------------------------------------------------------------------------------------------------------
# Metrics (DESIGN.md section 6)


def word_count(text: str) -> int:
    """Default token counter: whitespace-separated words."""
    return len(text.split())


@dataclass(frozen=True)
class ParallelStats:
    """Token and structure counts of one document (see `parallel_stats`)."""

    serial_tokens: int
    parallel_tokens: int
    groups: int
    branches: int

    @property
    def total_tokens(self) -> int:
        return self.serial_tokens + self.parallel_tokens


def parallel_stats(doc: Document, count: Callable[[str], int] = word_count) -> ParallelStats:
    """Token counts of the normalised doc, each text counted on its own (as the model tokenizes per segment).

    Parallel tokens are branch bodies only. Titles count as serial: the main stream writes them. Control
    tokens and the engine-inserted branch prefixes are not counted.
    """
    serial = parallel = groups = branches = 0
    for seg in doc.normalized().segments:
        if isinstance(seg, Serial):
            serial += count(seg.text)
        else:
            groups += 1
            branches += len(seg.branches)
            serial += sum(count(b.title) for b in seg.branches)
            parallel += sum(count(b.text) for b in seg.branches)
    return ParallelStats(serial, parallel, groups, branches)


def dp(doc: Document, count: Callable[[str], int] = word_count) -> float:
    """Degree of parallelism: parallel tokens / all tokens (0.0 for an empty document)."""
    stats = parallel_stats(doc, count)
    return stats.parallel_tokens / stats.total_tokens if stats.total_tokens else 0.0


def abn(docs: Iterable[Document]) -> float:
    """Average branch number: mean branches per group over all groups of all docs (0.0 if no group)."""
    groups = [g for d in docs for g in d.groups]
    return sum(len(g.branches) for g in groups) / len(groups) if groups else 0.0


def ppd(docs: Iterable[Document]) -> float:
    """Share of docs with at least one group (0.0 for no docs)."""
    flags = [bool(d.groups) for d in docs]
    return sum(flags) / len(flags) if flags else 0.0
