"""Turn a chat (messages + a parallel-marked answer) into token spans, segment by segment.

Every piece of text is tokenized on its own and the ids are concatenated (DESIGN.md section 2), so the
ids training sees are exactly the ids the engine feeds or samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aspd.layout import Kind, Span
from aspd.markup import (
    Branch,
    Document,
    Group,
    MarkupError,
    Serial,
    branch_body,
    flatten,
    parse,
)
from aspd.records import MessagesRecord, chat_record
from aspd.token_text import from_token_text
from aspd.tokens import ControlIds, branch_prefix_ids, is_head, text_ids

Message = dict[str, str]

_SENTINEL = "\x00ASPD_ANSWER\x00"


def prompt_ids(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """The model's own chat template up to and including the assistant header."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return text_ids(tokenizer, text)
    # No template: plain "role: content" lines, still a usable prompt for base models.
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return text_ids(tokenizer, text)


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The token(s) that close an assistant turn in this template (e.g. `<|im_end|>`), else EOS."""
    if getattr(tokenizer, "chat_template", None):
        msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL}]
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        if _SENTINEL in text:
            tail = text_ids(tokenizer, text.split(_SENTINEL, 1)[1])
            special = set(tokenizer.all_special_ids)
            for i in tail:
                if i in special:
                    return [i]
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has neither a chat template end-of-turn token nor an EOS token")
    return [int(tokenizer.eos_token_id)]


def answer_spans(tokenizer: Any, ctrl: ControlIds, doc: Document, *, first_group: int = 0) -> list[Span]:
    """Spans of a marked answer in the model token format (DESIGN.md section 2)."""
    spans: list[Span] = []
    g = first_group
    for seg in doc.segments:
        if isinstance(seg, Serial):
            if seg.text:
                spans.append(Span(Kind.SERIAL, text_ids(tokenizer, seg.text)))
            continue
        assert isinstance(seg, Group)
        for br in seg.branches:
            spans.append(Span(Kind.TITLE, [ctrl.title, *text_ids(tokenizer, br.title.strip()), ctrl.title_end]))
        spans.append(Span(Kind.PARA, [ctrl.para]))
        for b, br in enumerate(seg.branches):
            spans.append(Span(Kind.PREFIX, branch_prefix_ids(tokenizer, ctrl, br.title), g, b))
            spans.append(Span(Kind.BODY, body_ids(tokenizer, br), g, b))
            spans.append(Span(Kind.BRANCH_END, [ctrl.branch_end], g, b))
        spans.append(Span(Kind.PARA_END, [ctrl.para_end]))
        g += 1
    return spans


def body_ids(tokenizer: Any, branch: Branch) -> list[int]:
    """A body follows a head verbatim (" Eat more", "\\n\\nText"), or a "Label:" after one space."""
    body = branch_body(branch.title, branch.text)
    return text_ids(tokenizer, body if is_head(branch.title) else " " + body)


def chat_spans(
    tokenizer: Any,
    ctrl: ControlIds,
    messages: Sequence[Message],
    answer: Document | str,
    *,
    add_eot: bool = True,
) -> list[Span]:
    """Prompt (from the chat template, history included) + marked answer + end of turn."""
    doc = answer if isinstance(answer, Document) else Document((Serial(answer),))
    spans = [Span(Kind.PROMPT, prompt_ids(tokenizer, messages)), *answer_spans(tokenizer, ctrl, doc)]
    if add_eot:
        spans.append(Span(Kind.EOT, end_of_turn_ids(tokenizer)))
    return spans


def parse_answer(text: str) -> Document:
    """An answer in data markup, already rendered in the model token format, or plain text."""
    if "<|para|>" in text or "<|title|>" in text:
        return from_token_text(text)
    return parse(text)


def _flat_text(answer: str) -> str:
    try:
        return flatten(parse_answer(answer))
    except MarkupError:
        return answer


def record_messages(obj: Any) -> tuple[list[Message], str | None]:
    """The conversation before the answer in one input record, and the answer when the record holds it.

    Accepted (`aspd.records`): {messages: [...]} (a final assistant turn is the answer) or {question|prompt|
    instruction, context|input?, system?, history?: [{question, answer}]}. Earlier answers re-enter as
    flattened text. Raises ValueError (`RecordError`) naming what is wrong.
    """
    record = chat_record(obj)
    if isinstance(record, MessagesRecord):
        return record.chat()
    return [{**m, "content": _flat_text(m["content"])} if m["role"] == "assistant" else m
            for m in record.chat()], None
