"""The six control tokens of the model token format (DESIGN.md section 2)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SpecialTokens:
    title: str = "<|title|>"
    title_end: str = "<|/title|>"
    branch: str = "<|branch|>"
    branch_end: str = "<|/branch|>"
    para: str = "<|para|>"
    para_end: str = "<|/para|>"

    def all(self) -> tuple[str, ...]:
        return (self.title, self.title_end, self.branch, self.branch_end, self.para, self.para_end)


DEFAULT_TOKENS = SpecialTokens()


@dataclass(frozen=True)
class ControlIds:
    """Token ids of the six control tokens in one tokenizer."""

    title: int
    title_end: int
    branch: int
    branch_end: int
    para: int
    para_end: int
    names: SpecialTokens = DEFAULT_TOKENS

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, names: SpecialTokens = DEFAULT_TOKENS) -> ControlIds:
        ids = []
        for tok in names.all():
            i = tokenizer.convert_tokens_to_ids(tok)
            if i is None or i == tokenizer.unk_token_id:
                raise ValueError(f"tokenizer lacks control token {tok!r}; call add_control_tokens first")
            ids.append(int(i))
        return cls(*ids, names=names)

    def all(self) -> tuple[int, ...]:
        return (self.title, self.title_end, self.branch, self.branch_end, self.para, self.para_end)


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Ids of a piece of text with no BOS/EOS added: every segment is tokenized on its own."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# A list marker, a heading marker or bold at the start of a title.
_HEAD = re.compile(r"(?:\d{1,3}[.)]|[-*+\u2022]|#{1,6})[ \t]|(?:\*\*|__)\S")


def is_head(title: str) -> bool:
    """Whether a title is shown to the reader as the start of its branch (a "head"), not a hidden label.

    Heads start with a list, heading or bold marker or end with ':' (`1. **Diet**:`, `- Walk daily`, `## Sleep`,
    `Cost:`). The main stream writes them before the group opens, seeing the earlier ones, so numbering and
    bullets come out in reading order; the branch body continues after its head and never repeats it.
    """
    t = title.strip()
    return bool(t) and (t.endswith(":") or _HEAD.match(t) is not None)


def branch_prefix_ids(tokenizer: Any, ctrl: ControlIds, title: str) -> list[int]:
    """`<|branch|>` + tok(head), or `<|branch|>` + tok("Label:") for a hidden label title.

    The engine feeds exactly these ids, and training lays out the same.
    """
    t = title.strip()
    return [ctrl.branch, *text_ids(tokenizer, t if is_head(t) else f"{t}:")]


def add_control_tokens(tokenizer: Any, model: Any | None = None, names: SpecialTokens = DEFAULT_TOKENS) -> ControlIds:
    """Add the six tokens to a tokenizer and, if given, grow the model's embeddings to match. Idempotent."""
    add_special_tokens(tokenizer, model, names.all())
    return ControlIds.from_tokenizer(tokenizer, names)


def add_special_tokens(tokenizer: Any, model: Any | None, names: tuple[str, ...]) -> list[int]:
    """Add special tokens to a tokenizer and, if given, give the model rows for them; returns their ids.

    New rows (input embeddings, and the output head when it is not tied) start at the mean of the existing
    rows: the model then neither favours nor ignores the new tokens before fine-tuning. Idempotent.
    """
    missing = [t for t in names if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    new = [int(tokenizer.convert_tokens_to_ids(t)) for t in names]
    if model is None:
        return new
    emb = model.get_input_embeddings()
    old_rows = emb.weight.shape[0]
    if len(tokenizer) > old_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if missing or len(tokenizer) > old_rows:
        import torch

        with torch.no_grad():
            known = min(old_rows, min(new))
            in_w = model.get_input_embeddings().weight
            in_w[new] = in_w[:known].mean(0, keepdim=True).to(in_w.dtype)
            out = model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != in_w.data_ptr():
                out.weight[new] = out.weight[:known].mean(0, keepdim=True).to(out.weight.dtype)
                if getattr(out, "bias", None) is not None:
                    out.bias[new] = out.bias[:known].mean()
    return new
