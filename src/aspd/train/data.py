"""Training samples: JSONL in, laid-out tensors out, padded or packed into batches with 4D masks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aspd.attention import model_mask
from aspd.jsonl import JsonlReader, RecordIds
from aspd.layout import Layout, MaskMode, PosMode, Span, build_layout
from aspd.markup import Document, Serial, flatten
from aspd.pasta.layout import PastaLayout, build_pasta_layout
from aspd.pasta.markup import PastaDoc, from_aspd, has_tags, strip
from aspd.pasta.markup import parse as parse_pasta
from aspd.pasta.tokens import PastaIds
from aspd.sample import Message, chat_spans, parse_answer, record_messages
from aspd.tokens import ControlIds

FORMATS = ("aspd", "pasta")
Laid = Layout | PastaLayout  # both lay out ids, labels, positions and a visibility matrix


class DataError(ValueError):
    """A training file that cannot be read; names the file and line."""


@dataclass
class Record:
    """One training conversation: the turns before the answer, and the (possibly marked) answer."""

    id: str
    messages: list[Message]
    answer: Document | PastaDoc


def answer_doc(text: str, fmt: str = "aspd", *, serial: bool = False) -> Document | PastaDoc:
    """The training target of one answer. `pasta` takes PASTA markup, or converts ASPD markup / plain text.

    With `serial` the markup is dropped (the Seq baseline); a PASTA answer then becomes its plain text.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "pasta":
        pasta = parse_pasta(text) if has_tags(text) else from_aspd(parse_answer(text))
        return Document((Serial(strip(pasta)),)) if serial else pasta
    doc = parse_answer(text)  # PASTA tags are plain text to an ASPD run, as before
    return Document((Serial(flatten(doc)),)) if serial else doc


def read_records(
    path: str | Path, *, serial: bool = False, on_error: str = "raise", fmt: str = "aspd"
) -> list[Record]:
    """Read a training JSONL (or JSONL.gz). `serial` drops the markup (the Seq baseline). Bad lines (a
    duplicate id among them) raise DataError naming file:line, or with on_error="skip" are reported and skipped."""
    reader = JsonlReader(path, skip_bad_lines=on_error != "raise", error=DataError)
    ids = RecordIds()
    records: list[tuple[int, Record]] = []
    for lineno, obj in reader:
        try:
            msgs, answer = record_messages(obj)
            text = obj.get("markup", obj.get("answer", answer))
            if not isinstance(text, str) or not text.strip():
                raise ValueError("needs a non-empty 'answer' (or 'markup', or a final assistant message)")
            doc = answer_doc(text, fmt, serial=serial)
            rid = ids.add(obj, lineno)
        except (ValueError, KeyError, TypeError) as e:  # MarkupError is a ValueError
            reader.bad(lineno, str(e))
            continue
        records.append((lineno, Record(rid or "", msgs, doc)))
    if not records:
        raise reader.empty()
    made_up = ids.made_up()
    for lineno, r in records:
        r.id = r.id or made_up[lineno]
    return [r for _, r in records]


class LayoutDataset(torch.utils.data.Dataset):
    """Tokenizes records once; each item is a list of layouts (one, or several when packing).

    PASTA records (answers that are a PastaDoc) need `pasta`, the tag ids, and use `promise_len`.
    """

    def __init__(
        self,
        records: Sequence[Record],
        tokenizer: Any,
        ctrl: ControlIds,
        *,
        max_length: int = 1024,
        mask_mode: MaskMode | str = MaskMode.INDEP,
        pos_mode: PosMode | str = PosMode.SAME_SEQ,
        pack: bool = False,
        pasta: PastaIds | None = None,
        promise_len: int = 1,
    ):
        self.items: list[list[Laid]] = []
        dropped = 0
        layouts: list[Laid] = []
        for r in records:
            lay: Laid
            if isinstance(r.answer, PastaDoc):
                if pasta is None:
                    raise DataError(f"record {r.id}: PASTA answers need the PASTA tag ids")
                lay = build_pasta_layout(tokenizer, pasta, r.messages, r.answer, promise_len=promise_len)
            else:
                spans: list[Span] = chat_spans(tokenizer, ctrl, r.messages, r.answer)
                lay = build_layout(spans, mask_mode=mask_mode, pos_mode=pos_mode)
            if len(lay) > max_length:
                dropped += 1
                continue
            layouts.append(lay)
        if dropped:
            print(f"aspd: dropped {dropped} sample(s) longer than max_length={max_length}")
        if not layouts:
            raise DataError("no sample fits in max_length")
        if pack:
            self.items = list(_pack(layouts, max_length))
        else:
            self.items = [[lay] for lay in layouts]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> list[Laid]:
        return self.items[i]


def _pack(layouts: Sequence[Laid], max_length: int) -> Iterator[list[Laid]]:
    """First-fit-decreasing bins of whole samples; each sample keeps its own positions and mask block."""
    bins: list[tuple[int, list[Laid]]] = []
    for lay in sorted(layouts, key=len, reverse=True):
        for k, (used, members) in enumerate(bins):
            if used + len(lay) <= max_length:
                members.append(lay)
                bins[k] = (used + len(lay), members)
                break
        else:
            bins.append((len(lay), [lay]))
    for _, members in bins:
        yield members


class Collator:
    """Pads rows to one length and builds the [B, 1, T, T] additive masks (one per layer type if needed)."""

    def __init__(self, windows: dict[str, int | None], pad_id: int, dtype: torch.dtype | None = None):
        self.windows = windows
        self.pad_id = pad_id
        self.dtype = dtype

    def __call__(self, rows: Sequence[list[Laid]]) -> dict[str, Any]:
        width = max(sum(len(lay) for lay in row) for row in rows)
        b = len(rows)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        labels = torch.full((b, width), -100, dtype=torch.long)
        pos = torch.zeros((b, width), dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for lay in row:
                n = len(lay)
                ids[r, at : at + n] = lay.input_ids
                labels[r, at : at + n] = lay.labels
                pos[r, at : at + n] = lay.position_ids
                at += n

        def allowed(window: int | None) -> torch.Tensor:
            # Pads (and the space between packed samples) see only themselves: no fully masked rows.
            out = torch.eye(width, dtype=torch.bool).repeat(b, 1, 1)
            for r, row in enumerate(rows):
                at = 0
                for lay in row:
                    n = len(lay)
                    out[r, at : at + n, at : at + n] = lay.allowed(window)
                    at += n
            return out

        mask = model_mask(self.windows, allowed, self.dtype)
        return {"input_ids": ids, "labels": labels, "position_ids": pos, "attention_mask": mask}
