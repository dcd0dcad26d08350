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
from dataclasses import dataclass
from typing import Any

from aspd.tokens import is_head

__all__ = [
    "Branch",
    "Document",
    "Group",
    "MarkupError",
    "Segment",
    "Serial",
    "branch_body",
    "flatten",
    "is_head",
    "parse",
    "render",
    "same_text",
    "similarity",
    "validate",
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
