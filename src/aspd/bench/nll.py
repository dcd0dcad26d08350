"""Judge-free quality check: per-token NLL of each answer's visible text under a reference model.

The reference (typically the original model the ASPD model was fine-tuned from) reads the same chat prompt the
benchmarked model saw (its own chat template, via `aspd.sample.prompt_ids`; MT-Bench turn 2 with that model's
first answer in the history) followed by the flattened answer. Control-token strings are removed from the text
first, so only visible content is scored; the end-of-turn token is not scored. One forward per answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from aspd.bench.metrics import median
from aspd.sample import prompt_ids
from aspd.tokens import DEFAULT_TOKENS, text_ids

Row = dict[str, Any]


def visible_text(text: str) -> str:
    """The answer without control-token strings (a serial-mode answer may contain them as plain text)."""
    for t in DEFAULT_TOKENS.all():
        text = text.replace(t, "")
    return text


def _context(model: Any) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(cfg, "max_position_embeddings", None) or 1 << 30)


@torch.inference_mode()
def answer_nll(model: Any, tokenizer: Any, messages: Sequence[dict[str, str]], text: str) -> tuple[float, int]:
    """(summed NLL in nats, scored tokens) of `text` as the answer to `messages`.

    If prompt + answer exceed the model's context, the oldest prompt tokens are dropped (then the answer's
    tail): every scored token keeps as much conditioning as fits.
    """
    answer = text_ids(tokenizer, visible_text(text))
    if not answer:
        return 0.0, 0
    prompt = prompt_ids(tokenizer, messages)
    ctx = _context(model)
    answer = answer[: ctx - 1]
    prompt = prompt[-(ctx - len(answer)):] if len(prompt) + len(answer) > ctx else prompt
    dev = next(model.parameters()).device
    ids = torch.tensor([*prompt, *answer], dtype=torch.long, device=dev)
    logits = model(input_ids=ids[None], use_cache=False).logits[0]
    p = len(prompt)
    # Logits at position i predict token i + 1: the answer tokens ids[p:] come from positions p-1 .. n-2.
    logp = torch.log_softmax(logits[p - 1 : -1].float(), dim=-1)
    nll = -logp.gather(1, ids[p:, None]).squeeze(1)
    return float(nll.sum().item()), len(answer)


def score_rows(rows: Sequence[Row], model: Any, tokenizer: Any, *,
               on_row: Callable[[Row], None] | None = None) -> None:
    """Add `nll_sum`, `nll_tokens` and `nll` (mean per token, None for an empty answer) to each row in place."""
    for r in rows:
        total, n = answer_nll(model, tokenizer, r["messages"], r["text"])
        r["nll_sum"], r["nll_tokens"], r["nll"] = total, n, (total / n if n else None)
        if on_row is not None:
            on_row(r)


def nll_summary(rows: Sequence[Row]) -> dict[str, dict[str, Any]]:
    """Per label: token-weighted mean per-token NLL, median over answers of the per-answer mean, counts."""
    out: dict[str, dict[str, Any]] = {}
    for lab in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == lab]
        scored = [r for r in mine if r.get("nll_tokens")]
        n = sum(r["nll_tokens"] for r in scored)
        out[lab] = {
            "answers": len(mine), "scored_answers": len(scored), "tokens": n,
            "nll_mean": sum(r["nll_sum"] for r in scored) / n if n else None,
            "nll_median": median(r["nll_sum"] / r["nll_tokens"] for r in scored),
        }
    return out


def load_reference(name_or_path: str, *, device: str | None = None, dtype: str = "float32") -> tuple[Any, Any]:
    """The reference model as is (no control tokens needed: it scores flattened text). fp32 by default."""
    from transformers.utils import logging as hf_logging

    from aspd.loading import load_model

    hf_logging.disable_progress_bar()
    return load_model(name_or_path, device=device, dtype=dtype)
