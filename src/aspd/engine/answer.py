"""One reading of a hybrid answer's tokens into its document and flattened ids, shared by the engine (which
calls it as it decodes) and the server's event log (which replays the engine's events).

- Main-stream tokens go to the ids as they come. Title markup (`<|title|>…<|/title|>`) and `<|para|>` are held
  until it is known whether they open a group. If one opens they were structure: the group's branches carry
  the titles. Otherwise they were text after all: their text, without the control tokens, joins the serial
  text. That includes titles still pending at the end of turn, at the token budget or at the context limit.
- Control tokens and the end of turn are never visible text; `raw`/ids keep every token as sampled or fed.
- A group's branches go to the ids when it closes, each as its engine-inserted prefix and the tokens sampled
  for it (`<|/branch|>` included), then `<|/para|>`.

`aspd.engine.stream.ReadingOrderView` shows the same text as it streams.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from aspd.markup import Branch, Document, Group, Segment, Serial, branch_body
from aspd.tokens import ControlIds, branch_prefix_ids


class AnswerBuilder:
    """Feed it main tokens, group openings, branch tokens and closings in decoding order; `finish` gives
    (document, flattened ids)."""

    def __init__(self, tokenizer: Any, ctrl: ControlIds, eot: Collection[int]):
        self.tok = tokenizer
        self.ctrl = ctrl
        self.eot = frozenset(eot)
        self.hidden = frozenset(ctrl.all()) | self.eot  # never part of visible text
        self.ids: list[int] = []  # flattened order
        self.segments: list[Segment] = []
        self.serial: list[int] = []  # the current run of serial ids
        self.pending: list[int] = []  # title markup and <|para|> not yet known to open a group
        self.in_title = False
        self.titles: tuple[str, ...] = ()
        self.bodies: list[list[int]] | None = None  # tokens sampled per branch of the open group

    def main(self, tok: int) -> None:
        """A main-stream token as sampled (or forced)."""
        c = self.ctrl
        self.ids.append(tok)
        if tok in self.eot:
            return  # the answer ends; what is pending is settled by finish()
        if self.in_title or tok == c.title:
            self.in_title = tok != c.title_end
            self.pending.append(tok)
        elif tok == c.para:
            self.pending.append(tok)
        else:  # text (or a stray control token): whatever was pending was text too
            self.serial += self.pending
            self.pending = []
            self.serial.append(tok)

    def open(self, titles: Sequence[str]) -> None:
        """The pending `<|para|>` opened a group of these (distinct, cleaned) titles."""
        self._flush()
        self.pending, self.in_title = [], False
        self.titles = tuple(titles)
        self.bodies = [[] for _ in titles]

    def branch(self, b: int, tok: int) -> None:
        assert self.bodies is not None, "branch token outside a group"
        self.bodies[b].append(tok)

    def close(self) -> None:
        """The open group ends (or is cut short: then `<|/para|>` is left out unless every branch ended)."""
        if self.bodies is None:
            return
        c = self.ctrl
        branches = []
        for title, body in zip(self.titles, self.bodies, strict=True):
            self.ids += [*branch_prefix_ids(self.tok, c, title), *body]
            text = self._decode([t for t in body if t not in self.hidden])
            branches.append(Branch(title, branch_body(title, text)))
        if all(b and b[-1] == c.branch_end for b in self.bodies):
            self.ids.append(c.para_end)
        self.segments.append(Group(tuple(branches)))
        self.bodies = None

    def finish(self) -> tuple[Document, list[int]]:
        self.close()
        self.serial += self.pending  # titles that never opened a group are text
        self.pending, self.in_title = [], False
        self._flush()
        return Document(tuple(self.segments)), list(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False) if ids else ""

    def _flush(self) -> None:
        text = self._decode([t for t in self.serial if t not in self.hidden])
        self.serial = []
        if not text:
            return
        if self.segments and isinstance(self.segments[-1], Serial):
            self.segments[-1] = Serial(self.segments[-1].text + text)
        else:
            self.segments.append(Serial(text))
