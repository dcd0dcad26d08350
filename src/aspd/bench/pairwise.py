"""Pairwise judging: a model's answer against a baseline's on the same question, both orders, ties allowed.

MT-Bench's pairwise prompts (`pair-v2`, `pair-math-v1` and their multi-turn forms, from judge_prompts.jsonl) are
given to a local judge model, and the verdict is read from its next-token likelihoods instead of sampled: the
judge's reply is scored as each of "[[A]]", "[[B]]" and "[[C]]" (tie), and the likeliest is its verdict. One
forward per order, no parsing, no unscored rows; the price is that the judge gives no explanation first.

A question counts as a win when the judge prefers the model in both orders, a loss when it prefers the baseline in
both, and a tie otherwise (a tie verdict, or the two orders disagreeing: position bias), as MT-Bench does.

A small judge that favours whichever answer it reads first turns nearly every question into such a tie. The
summary therefore also gives the debiased preference of each question: half the difference of the model's
log-odds, [[A]] against [[B]], as A and as B. A constant pull towards the first answer adds to both orders'
log-odds of A and cancels, so its sign says which answer the judge prefers once the order is balanced, and a
sign test over the questions says whether the split could be chance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from aspd.bench.nll import visible_text
from aspd.bench.quality import REF_CATEGORIES, JudgePrompt, load_judge_prompts
from aspd.sample import prompt_ids
from aspd.tokens import text_ids

Row = dict[str, Any]
PAIR_PROMPTS = ("pair-v2", "pair-math-v1", "pair-v2-multi-turn", "pair-math-v1-multi-turn")
VERDICTS = ("A", "B", "C")


def load_pair_prompts(path: str | Path) -> dict[str, JudgePrompt]:
    """The four pairwise prompts of a FastChat judge_prompts.jsonl, by name."""
    return load_judge_prompts(path, PAIR_PROMPTS)


def pairs(rows: Sequence[Row], model: str, baseline: str) -> list[tuple[Row, Row]]:
    """(model row, baseline row) for every (question, turn, seed) both labels answered, in the model's order."""
    base = {(r["id"], r.get("turn", 1), r.get("seed")): r for r in rows if r["label"] == baseline}
    return [(r, base[k]) for r in rows if r["label"] == model and (k := (r["id"], r.get("turn", 1), r.get("seed"))) in base]


def pair_messages(a: Row, b: Row, prompts: dict[str, JudgePrompt],
                  references: dict[str, list[str]]) -> tuple[str, list[dict[str, str]]]:
    """(prompt name, judge messages) with `a` as assistant A and `b` as assistant B; ValueError if not gradable."""
    turn = int(a.get("turn", 1))
    users = [m["content"] for m in a["messages"] if m.get("role") == "user"]
    ref = references.get(str(a["id"])) if a.get("category") in REF_CATEGORIES else None
    ta, tb = visible_text(a["text"]), visible_text(b["text"])
    if turn == 1:
        if not users:
            raise ValueError("row has no user message")
        kw = {"question": users[-1], "answer_a": ta, "answer_b": tb}
        name = "pair-v2"
        if ref:
            name, kw["ref_answer_1"] = "pair-math-v1", ref[0]
    elif turn == 2:
        first = [[m["content"] for m in r["messages"] if m.get("role") == "assistant"] for r in (a, b)]
        if len(users) < 2 or not all(first):
            raise ValueError("turn-2 row lacks the first turn in its messages")
        kw = {"question_1": users[0], "question_2": users[1], "answer_a_1": first[0][0], "answer_a_2": ta,
              "answer_b_1": first[1][0], "answer_b_2": tb}
        name = "pair-v2-multi-turn"
        if ref and len(ref) >= 2:
            name = "pair-math-v1-multi-turn"
            kw.update(ref_answer_1=ref[0], ref_answer_2=ref[1])
    else:
        raise ValueError(f"turn {turn}: the pairwise prompts cover turns 1 and 2 only")
    return name, prompts[name].chat(**kw)


@torch.inference_mode()
def verdict_logprobs(model: Any, tokenizer: Any, messages: Sequence[dict[str, str]]) -> dict[str, float]:
    """Log-likelihood of the reply "[[X]]" for X in A, B, C, from one batched forward (prompt kept whole)."""
    prompt = prompt_ids(tokenizer, messages)
    conts = [text_ids(tokenizer, f"[[{v}]]") for v in VERDICTS]
    width = len(prompt) + max(map(len, conts))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dev = next(model.parameters()).device
    ids = torch.full((len(conts), width), pad, dtype=torch.long, device=dev)
    for i, c in enumerate(conts):  # right padding: the padded tail is never read
        ids[i, : len(prompt) + len(c)] = torch.tensor([*prompt, *c], device=dev)
    logits = model(input_ids=ids, use_cache=False).logits
    p = len(prompt)
    out: dict[str, float] = {}
    for i, (v, c) in enumerate(zip(VERDICTS, conts, strict=True)):
        logp = torch.log_softmax(logits[i, p - 1 : p - 1 + len(c)].float(), dim=-1)
        out[v] = float(logp.gather(1, torch.tensor(c, device=dev)[:, None]).sum())
    return out


def combine(first: str, second: str) -> str:
    """The outcome for the model from the verdicts with the model as A (`first`) and as B (`second`)."""
    if first == "A" and second == "B":
        return "win"
    if first == "B" and second == "A":
        return "loss"
    return "tie"


def judge_pairs(model: Any, tokenizer: Any, rows: Sequence[Row], model_label: str, baseline_label: str,
                prompts: dict[str, JudgePrompt], references: dict[str, list[str]], *,
                on_pair: Callable[[Row], None] | None = None) -> list[Row]:
    """One record per question and turn: both orders' verdicts and log-likelihoods, and the outcome."""
    out: list[Row] = []
    for a, b in pairs(rows, model_label, baseline_label):
        rec: Row = {"id": a["id"], "turn": a.get("turn", 1), "category": a.get("category")}
        try:
            rec["prompt"], fwd = pair_messages(a, b, prompts, references)
            _, rev = pair_messages(b, a, prompts, references)
        except ValueError as e:
            rec.update(outcome=None, error=str(e))
        else:
            lp1, lp2 = verdict_logprobs(model, tokenizer, fwd), verdict_logprobs(model, tokenizer, rev)
            v1, v2 = max(lp1, key=lp1.__getitem__), max(lp2, key=lp2.__getitem__)
            rec.update(model_first=v1, model_second=v2, logprobs_first=lp1, logprobs_second=lp2,
                       outcome=combine(v1, v2), error=None)
        out.append(rec)
        if on_pair is not None:
            on_pair(rec)
    return out


def preference(rec: Row) -> float:
    """The model's log-odds of being preferred with the order balanced (> 0: the judge prefers the model)."""
    first, second = rec["logprobs_first"], rec["logprobs_second"]
    return ((first["A"] - first["B"]) - (second["A"] - second["B"])) / 2


def sign_test(k: int, n: int) -> float:
    """Two-sided p-value of k successes in n fair coin flips."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def pairwise_summary(records: Sequence[Row]) -> dict[str, Any]:
    """Counts and rates of win / tie / loss overall and per turn (unjudged records counted apart), and the
    debiased preferences (see the module's docstring)."""
    def stats(rs: Sequence[Row]) -> dict[str, Any]:
        done = [r for r in rs if r["outcome"]]
        n = len(done)
        c = {k: sum(r["outcome"] == k for r in done) for k in ("win", "tie", "loss")}
        # A-first position bias: how often the judge picks whichever answer it reads first.
        first = sum((r["model_first"] == "A") + (r["model_second"] == "A") for r in done)
        prefs = [preference(r) for r in done]
        model, base = sum(p > 0 for p in prefs), sum(p < 0 for p in prefs)
        return {"pairs": len(rs), "judged": n, **c,
                "win_rate": c["win"] / n if n else None, "win_tie_rate": (c["win"] + c["tie"]) / n if n else None,
                "a_verdict_share": first / (2 * n) if n else None,
                "debiased": {"model": model, "baseline": base, "even": n - model - base,
                             "model_share": model / n if n else None,
                             "mean_log_odds": sum(prefs) / n if n else None,
                             "sign_test_p": sign_test(model, model + base)}}

    out = {"all": stats(records)}
    for t in sorted({r["turn"] for r in records}):
        out[f"turn {t}"] = stats([r for r in records if r["turn"] == t])
    return out
