"""The model's token format of a document, as text: `<|title|>`, `<|branch|>`, ... around titles and branch
bodies (DESIGN.md section 2); `to_token_text` writes it and `from_token_text` reads it back. Turning the text
into ids is `aspd.sample`'s job.
"""

from __future__ import annotations

import re

from aspd.markup import Branch, Document, Group, MarkupError, Segment, Serial, _at, _title_problem, validate
from aspd.tokens import DEFAULT_TOKENS, SpecialTokens, is_head

__all__ = ["TITLE_SEPARATOR", "from_token_text", "to_token_text"]


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
