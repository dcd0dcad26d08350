"""PASTA-LANG markup in its training form, as a small tree.

Training form: each asynchronous span sits right after the promise that started it::

    <scope>1. Eye strain:<promise/><async> Screens tire the eyes.</async>
    2. Posture:<promise/><async> Hunching hurts.</async>
    </scope>

Only the five exact tags are markup; any other `<...>` (`<Scope>`, `<scope >`, `<promise>`) is text. Rules:
tags balance; `<async>` comes right after `<promise/>` and every `<promise/>` is followed by its `<async>`;
a promise (hence every async span) lies inside some `<scope>` (one opened in its own span, else the one its
span was forked in). `render(parse(s)) == s` for every valid `s`; `strip` splices each span's content in
place of its promise, giving the plain answer.

Two ways to get such markup from answers: `from_aspd` (ASPD branch groups: one scope per group, each branch
head synchronous and the rest of its text asynchronous) and `annotate_lists` (the rule of the PASTA paper:
a list becomes a scope, each item's elaboration and nested children an async span).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aspd.markup import Document, Group, MarkupError, Serial, is_head
from aspd.pasta.tokens import PASTA_TAGS

__all__ = [
    "Node",
    "PastaDoc",
    "PastaError",
    "Promise",
    "Scope",
    "Text",
    "annotate_lists",
    "from_aspd",
    "has_tags",
    "main_text",
    "parse",
    "promises",
    "render",
    "strip",
    "validate",
]


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Promise:
    """A `<promise/>` together with the content of its async span."""

    children: tuple[Node, ...]


@dataclass(frozen=True)
class Scope:
    children: tuple[Node, ...]


Node = Text | Promise | Scope


@dataclass(frozen=True)
class PastaDoc:
    children: tuple[Node, ...]


class PastaError(MarkupError):
    """Invalid PASTA markup; `line`/`column` (1-based) or `position` say where, as for ASPD markup."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.message, self.position, self.line, self.column))


def _rebuild(message: str, position: int | None, line: int | None, column: int | None) -> PastaError:
    return PastaError(message, position, line=line, column=column)


T = PASTA_TAGS
_TAG = re.compile("|".join(re.escape(t) for t in T.all()))


def has_tags(text: str) -> bool:
    """Whether the text holds any of the five PASTA tags (then it is PASTA markup, not ASPD or plain)."""
    return _TAG.search(text) is not None


# ---------------------------------------------------------------------------------------------------- parse


@dataclass
class _Frame:
    tag: str  # "" for the document
    at: int  # offset of the opening tag
    children: list[Node]


def parse(text: str) -> PastaDoc:
    """The tree of a training-form answer; PastaError (with line:column) on invalid markup."""
    stack = [_Frame("", 0, [])]
    pos = 0
    promise_at: int | None = None  # offset of a <promise/> still waiting for its <async>

    def fail(message: str, at: int) -> PastaError:
        return PastaError(message, at, text)

    for m in _TAG.finditer(text):
        tag, at = m.group(), m.start()
        if promise_at is not None and (tag != T.async_ or at != pos):
            raise fail("<promise/> is not followed directly by <async>", promise_at)
        if at > pos:
            stack[-1].children.append(Text(text[pos:at]))
        pos = m.end()
        if tag == T.scope:
            stack.append(_Frame(tag, at, []))
        elif tag == T.promise:
            if not any(f.tag == T.scope for f in stack):
                raise fail("<promise/> outside any <scope>", at)
            promise_at = at
        elif tag == T.async_:
            if promise_at is None:
                raise fail("<async> not right after a <promise/>", at)
            promise_at = None
            stack.append(_Frame(tag, at, []))
        else:  # a closing tag
            opener = T.scope if tag == T.scope_end else T.async_
            top = stack[-1]
            if top.tag != opener:
                if any(f.tag == opener for f in stack):
                    raise fail(f"{tag} before the {top.tag} opened at {_where(text, top.at)} is closed", at)
                raise fail(f"{tag} without a matching {opener}", at)
            stack.pop()
            node = Scope(tuple(top.children)) if tag == T.scope_end else Promise(tuple(top.children))
            stack[-1].children.append(node)
    if promise_at is not None:
        raise fail("<promise/> is not followed directly by <async>", promise_at)
    if len(stack) > 1:
        top = stack[-1]
        raise fail(f"{top.tag} is never closed", top.at)
    if pos < len(text):
        stack[0].children.append(Text(text[pos:]))
    return PastaDoc(tuple(stack[0].children))


def _where(text: str, at: int) -> str:
    line = text.count("\n", 0, at) + 1
    column = at - (text.rfind("\n", 0, at) + 1) + 1
    return f"{line}:{column}"


# ------------------------------------------------------------------------------------------- render / strip


def validate(doc: PastaDoc) -> None:
    """Check a tree built in code: promises inside a scope, and no text that reads as a tag."""

    def walk(nodes: tuple[Node, ...], in_scope: bool, where: str) -> None:
        for i, n in enumerate(nodes):
            here = f"{where}/{i}"
            if isinstance(n, Text):
                if (m := _TAG.search(n.text)) is not None:
                    raise PastaError(f"text at {here} contains the tag {m.group()}")
            elif isinstance(n, Promise):
                if not in_scope:
                    raise PastaError(f"promise at {here} is outside any scope")
                walk(n.children, True, here)
            elif isinstance(n, Scope):
                walk(n.children, True, here)
            else:
                raise PastaError(f"unknown node at {here}: {n!r}")

    walk(doc.children, False, "doc")


def render(doc: PastaDoc) -> str:
    """Training-form markup; `render(parse(s)) == s`."""
    validate(doc)
    return "".join(_render(n) for n in doc.children)


def _render(n: Node) -> str:
    if isinstance(n, Text):
        return n.text
    inner = "".join(_render(c) for c in n.children)
    if isinstance(n, Scope):
        return f"{T.scope}{inner}{T.scope_end}"
    return f"{T.promise}{T.async_}{inner}{T.async_end}"


def strip(doc: PastaDoc) -> str:
    """The plain answer: tags dropped, each async span's content in place of its promise."""
    return "".join(_strip(n, True) for n in doc.children)


def main_text(doc: PastaDoc) -> str:
    """What the main stream writes itself: tags dropped and async content left out."""
    return "".join(_strip(n, False) for n in doc.children)


def _strip(n: Node, spans: bool) -> str:
    if isinstance(n, Text):
        return n.text
    if isinstance(n, Promise) and not spans:
        return ""
    return "".join(_strip(c, spans) for c in n.children)


def promises(doc: PastaDoc) -> int:
    """How many async spans the document has, nested ones included."""

    def count(nodes: tuple[Node, ...]) -> int:
        return sum(isinstance(n, Promise) + (0 if isinstance(n, Text) else count(n.children)) for n in nodes)

    return count(doc.children)


def _merge(nodes: list[Node]) -> tuple[Node, ...]:
    """Adjacent texts joined and empty ones dropped: the shape `parse` gives."""
    out: list[Node] = []
    for n in nodes:
        if isinstance(n, Text):
            if not n.text:
                continue
            if out and isinstance(out[-1], Text):
                out[-1] = Text(out[-1].text + n.text)
                continue
        out.append(n)
    return tuple(out)


# ------------------------------------------------------------------------------------------- annotators

_MARKER = r"[ \t]*(?:(?:\d{1,3}[.)]|[-*+•])[ \t]+)?"
_MAX_HEAD_WORDS = 8
# Item heads; group 1 ends where the async span begins (its leading space goes into the span).
_HEADS = (
    re.compile(_MARKER + r"((\*\*|__)(?=\S)[^*_\n]{1,80}?(?<=\S)\2(?:[ \t]*[:\-–—])?)(?=[ \t]+\S|[ \t]*$)"),
    re.compile(_MARKER + r"([^\s:*_][^:\n]{0,60}?:)(?=[ \t]+\S|[ \t]*$)"),
    re.compile(_MARKER + r"([^\s\-–—*_][^\n]{0,60}?[ \t][-–—])(?=[ \t]+\S)"),
)
_FIRST_WORDS = re.compile(_MARKER + r"((?:\S+[ \t]+){0,3}\S+)")


def _head_end(text: str) -> int | None:
    """Where a `**Head**:` / `Head:` / `Head -` head on the first line ends (the earliest one), else None."""
    first = text.split("\n", 1)[0]
    ends = []
    for rx in _HEADS:
        m = rx.match(first)
        if m is not None and len(m.group(1).split()) <= _MAX_HEAD_WORDS and ". " not in m.group(1):
            ends.append(m.end(1))
    return min(ends) if ends else None


def _split(text: str, head_end: int) -> list[Node]:
    """`text` as a synchronous head and, when the rest holds anything, a promise with the rest."""
    head, rest = text[:head_end], text[head_end:]
    if not rest.strip():
        return [Text(text)]
    return [Text(head), Promise((Text(rest),))]


def _branch_head(text: str, title: str) -> int:
    """Where a branch's synchronous head ends: its `Head:`-style lead, else its title, else its first words."""
    if (end := _head_end(text)) is not None:
        return end
    first = text.split("\n", 1)[0]
    at = first.lower().find(title.strip().lower()) if title.strip() else -1
    end = at + len(title.strip())
    # Only a whole-word title near the start reads as a head ("1. **Diet**: ...", not "Working" for "Work").
    if 0 <= at <= 12 and (end == len(first) or not first[end].isalnum()):
        while end < len(first) and first[end] in "*_:.;!?":
            end += 1
        return end
    m = _FIRST_WORDS.match(first)
    return m.end(1) if m else 0


def from_aspd(doc: Document) -> PastaDoc:
    """ASPD markup as PASTA: one scope per group, each branch's head synchronous, the rest async.

    The branch title itself is not answer text (`flatten` drops it), so the head is taken from the branch
    text: a `Head:` lead, else the title where the text starts with it, else the first few words. Pieces are
    joined exactly as `flatten` joins them, so `strip(from_aspd(d)) == flatten(d)`.
    """
    pieces: list[list[Node]] = []
    for seg in doc.normalized().segments:
        if isinstance(seg, Serial):
            pieces.append([Text(seg.text)])
            continue
        assert isinstance(seg, Group)
        body: list[Node] = []
        for br in (b for b in seg.branches if b.visible):
            if body:
                body.append(Text("\n"))
            # A head title is the branch's synchronous head by construction.
            cut = len(br.title.strip()) if is_head(br.title) else _branch_head(br.text, br.title)
            body += _split(br.visible, cut)
        if body:
            pieces.append([Scope(_merge(body))])
    nodes: list[Node] = []
    for i, p in enumerate(pieces):
        nodes += [Text("\n"), *p] if i else p
    out = PastaDoc(_merge(nodes))
    validate(out)  # text holding a literal PASTA tag cannot round-trip
    return out


_LIST_LINE = re.compile(r"^[ \t]*(?:\d{1,3}[.)]|[-*+•])[ \t]+\S", re.MULTILINE)


def _item_split(text: str) -> int | None:
    """Where an item's async span starts: after its head, else (nested children only) at its first line end."""
    end = _head_end(text)
    if end is not None:
        return end if text[end:].strip() else None
    first, _, rest = text.partition("\n")
    # Any item line inside an item is its child: a sibling would have ended the item.
    return len(first) if _LIST_LINE.search(rest) else None


def annotate_lists(text: str) -> PastaDoc | None:
    """The paper's list rule on a plain answer, or None when no list has two items with an elaboration.

    Each top-level list (numbered or bulleted, nested lists kept inside their item; detection shared with the
    ASPD rule rewriter) becomes a scope; in every item the head (`**Head**:`, `Head:`, `Head -`) stays
    synchronous and the elaboration after it, continuation lines and nested children included, becomes an
    async span. An item without such a head is split only when it has nested children (its first line
    stays synchronous). Nothing is added or lost: `strip(result) == text`.
    """
    from aspd.pipeline.rules import STRATEGIES, find_runs  # the list detector; heavy-ish, load on demand

    if has_tags(text):
        return None
    nodes: list[Node] = []
    pos = 0
    for run in STRATEGIES["lists"](find_runs(text)):
        body: list[Node] = []
        split = 0
        at = run.start
        for it in run.items:
            body.append(Text(text[at : it.start]))
            item = text[it.start : it.end]
            cut = _item_split(item)
            if cut is None:
                body.append(Text(item))
            else:
                split += 1
                body += _split(item, cut)
            at = it.end
        if split < 2:
            continue
        nodes += [Text(text[pos : run.start]), Scope(_merge(body))]
        pos = run.end
    if not nodes:
        return None
    nodes.append(Text(text[pos:]))
    return PastaDoc(_merge(nodes))
