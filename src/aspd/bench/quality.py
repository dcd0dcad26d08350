"""LLM-as-judge answer quality, MT-Bench single-answer grading, over any OpenAI-compatible endpoint.

The judge prompts are read at run time from `<bench dir>/judge_prompts.jsonl` (FastChat's file; a copy ships in
`aspd/bench/shipped/` with its NOTICE). Which prompt a row gets (the mapping MT-Bench's `gen_judgment.py` uses):

    turn 1, category not in REF_CATEGORIES             -> single-v1
    turn 1, category in REF_CATEGORIES, reference known -> single-math-v1            (with ref_answer_1)
    turn 2, category not in REF_CATEGORIES             -> single-v1-multi-turn
    turn 2, category in REF_CATEGORIES, reference known -> single-math-v1-multi-turn (with ref_answer_1, _2)

A reference-needing category without a reference answer for that question id (or, on turn 2, without a second
reference turn) falls back to the plain prompt of that turn; the row records the prompt name it got. References
come from `<bench dir>/reference_answer/<bench file stem>_gpt-4.jsonl` (or an explicit file). Turns past the
second are not graded (MT-Bench has no prompt for them): they are recorded as failed.

Scores are parsed strictly (see `parse_score`); a reply that does not parse is asked again with a fresh seed,
up to `retries` more times, then the row is recorded as failed with score None and the reason.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aspd.bench.data import BenchDataError, read_jsonl

REF_CATEGORIES = frozenset({"math", "reasoning", "coding"})  # MT-Bench's NEED_REF_CATS (minus arena-hard)
PROMPT_NAMES = ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")

_BRACKETS = re.compile(r"\[\[(.*?)\]\]", re.S)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


class ScoreParseError(ValueError):
    """A judge reply without exactly one valid `[[N]]` rating."""


def parse_score(reply: str | None) -> float:
    """The rating in a judge reply; raises ScoreParseError unless there is exactly one `[[N]]`.

    N is a plain number (digits, optional decimals) in 1..10, with nothing else inside the brackets:
    "[[7]]" and "Rating: [[7.5]]" parse; "[[ 7 ]]" (whitespace inside), "[[11]]", "[[0]]", "[[7/10]]",
    "[[7]] ... [[8]]" (two ratings, even if equal), "rating: 7", "[7]" and an empty reply do not. Stricter than
    MT-Bench's regex on purpose: an ambiguous reply is asked again rather than guessed.
    """
    if not reply or not reply.strip():
        raise ScoreParseError("empty reply")
    found = _BRACKETS.findall(reply)
    if not found:
        raise ScoreParseError("no [[rating]] in reply")
    if len(found) > 1:
        raise ScoreParseError(f"{len(found)} [[...]] in reply, expected exactly one")
    inner = found[0]
    if not _NUMBER.fullmatch(inner):
        raise ScoreParseError(f"[[{inner[:20]}]] is not a plain number")
    value = float(inner)
    if not 1 <= value <= 10:
        raise ScoreParseError(f"rating {inner} outside 1..10")
    return value


@dataclass(frozen=True)
class JudgePrompt:
    name: str
    system_prompt: str
    prompt_template: str

    def chat(self, **fields: str) -> list[dict[str, str]]:
        """The judge's messages: the system prompt, then the template filled with `fields`."""
        return [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": self.prompt_template.format(**fields)}]


def load_judge_prompts(path: str | Path, names: Sequence[str] = PROMPT_NAMES) -> dict[str, JudgePrompt]:
    """The prompts `names` (default: the four single-answer ones) of a FastChat judge_prompts.jsonl, by name;
    every one must be there."""
    p = Path(path)
    out: dict[str, JudgePrompt] = {}
    for n, obj in read_jsonl(p):
        try:
            if obj.get("name") in names:
                out[obj["name"]] = JudgePrompt(obj["name"], obj["system_prompt"], obj["prompt_template"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BenchDataError(f"{p}:{n}: not a judge prompt ({type(e).__name__}: {e})") from None
    missing = [k for k in names if k not in out]
    if missing:
        raise BenchDataError(f"{p}: missing judge prompt(s) {missing}")
    return out


def load_references(path: str | Path) -> dict[str, list[str]]:
    """question id (as a string) -> reference turns, from a FastChat reference_answer/*.jsonl."""
    p = Path(path)
    out: dict[str, list[str]] = {}
    for n, obj in read_jsonl(p):
        try:
            turns = obj["choices"][0]["turns"]
            if not all(isinstance(t, str) for t in turns):
                raise TypeError("turns are not strings")
            out[str(obj["question_id"])] = list(turns)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise BenchDataError(f"{p}:{n}: not a reference answer ({type(e).__name__}: {e})") from None
    return out


def default_reference_file(bench_dir: Path, bench_file: str | None) -> Path | None:
    """`<bench dir>/reference_answer/<stem>_gpt-4.jsonl` for the results' question file, if it exists."""
    if not bench_file:
        return None
    p = bench_dir / "reference_answer" / f"{Path(bench_file).stem}_gpt-4.jsonl"
    return p if p.is_file() else None


def judge_messages(row: dict[str, Any], prompts: dict[str, JudgePrompt],
                   references: dict[str, list[str]]) -> tuple[str, list[dict[str, str]]]:
    """(prompt name, chat messages for the judge) for one answer row; ValueError if it cannot be graded.

    The row's `messages` hold the conversation so far (user, assistant, user, ...) and `text` the answer.
    """
    turn, msgs, answer = int(row["turn"]), row["messages"], row["text"]
    users = [m["content"] for m in msgs if m.get("role") == "user"]
    assistants = [m["content"] for m in msgs if m.get("role") == "assistant"]
    ref = references.get(str(row["id"])) if row.get("category") in REF_CATEGORIES else None
    if turn == 1:
        if len(users) < 1:
            raise ValueError("row has no user message")
        kw: dict[str, str] = {"question": users[-1], "answer": answer}
        name = "single-v1"
        if ref:
            name, kw["ref_answer_1"] = "single-math-v1", ref[0]
    elif turn == 2:
        if len(users) < 2 or len(assistants) < 1:
            raise ValueError("turn-2 row lacks the first turn in its messages")
        kw = {"question_1": users[0], "answer_1": assistants[0], "question_2": users[1], "answer_2": answer}
        name = "single-v1-multi-turn"
        if ref and len(ref) >= 2:
            name = "single-math-v1-multi-turn"
            kw.update(ref_answer_1=ref[0], ref_answer_2=ref[1])
    else:
        raise ValueError(f"turn {turn}: MT-Bench grading has prompts for turns 1 and 2 only")
    return name, prompts[name].chat(**kw)


async def judge_row(backend: Any, row: dict[str, Any], prompts: dict[str, JudgePrompt],
                    references: dict[str, list[str]], retries: int,
                    retry_temperature: float | None = None) -> dict[str, Any]:
    """Grade one row: {id, category, turn, label, prompt, score, judge_raw, attempts, error}. Never raises for
    a bad reply or a failed request. An unparseable reply is asked again (attempt i uses seed `backend.seed + i`:
    a fresh call, cached apart, sampled at `retry_temperature` when given: at temperature 0 a deterministic judge
    would only repeat itself) up to `retries` times; a request that failed for good (the backend has its own
    HTTP retries) ends the row at once. `error` lists the reason of every failed attempt."""
    from aspd.pipeline.backends import CallLog, use_log

    out: dict[str, Any] = {k: row.get(k) for k in ("id", "category", "turn", "label")}
    out.update(prompt=None, score=None, judge_raw=None, attempts=0, error=None)
    try:
        out["prompt"], messages = judge_messages(row, prompts, references)
    except (ValueError, KeyError, TypeError) as e:
        out["error"] = f"not gradable: {e}"
        return out
    errors: list[str] = []
    for attempt in range(retries + 1):
        log = CallLog()
        use_log(log)
        body = backend.body(messages, judge=True, index=attempt)
        if attempt and retry_temperature is not None:
            body["temperature"] = retry_temperature
        reply = await backend.request(body)
        out["attempts"] = attempt + 1
        if reply is None:  # the backend already retried the HTTP request: asking again would only repeat that
            errors.append(f"request failed ({log.errors[-1] if log.errors else 'no detail'})")
            break
        out["judge_raw"] = reply
        try:
            out["score"] = parse_score(reply)
        except ScoreParseError as e:
            errors.append(f"unparseable reply: {e}")
            continue
        out["error"] = None
        return out
    out["error"] = f"failed after {out['attempts']} attempt(s); " + "; ".join(errors)
    return out


async def judge_rows(backend: Any, rows: Sequence[dict[str, Any]], prompts: dict[str, JudgePrompt],
                     references: dict[str, list[str]], retries: int,
                     on_row: Callable[[int, dict[str, Any]], None] | None = None,
                     retry_temperature: float | None = None) -> list[dict[str, Any]]:
    """All rows concurrently (the backend's semaphore bounds the requests in flight), results in row order."""

    async def one(i: int, row: dict[str, Any]) -> dict[str, Any]:
        r = await judge_row(backend, row, prompts, references, retries, retry_temperature)
        if on_row:
            on_row(i, r)
        return r

    try:
        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(rows))))
    finally:
        await backend.aclose()


def _stats(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    scores = [r["score"] for r in rows if r["score"] is not None]
    return {"mean": round(sum(scores) / len(scores), 4) if scores else None, "scored": len(scores),
            "failed": len(rows) - len(scores)}


def quality_summary(graded: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """label -> {mean, scored, failed, by_turn: {turn: ...}, by_category: {category: ...}}."""
    out: dict[str, Any] = {}
    for label in dict.fromkeys(r["label"] for r in graded):
        mine = [r for r in graded if r["label"] == label]
        out[label] = {**_stats(mine),
                      "by_turn": {str(t): _stats([r for r in mine if r["turn"] == t])
                                  for t in dict.fromkeys(r["turn"] for r in mine)},
                      "by_category": {c: _stats([r for r in mine if r["category"] == c])
                                      for c in dict.fromkeys(r["category"] for r in mine)}}
    return out


def quality_table(summary: dict[str, Any]) -> str:
    """A Markdown table: one line per label, overall and per turn."""
    turns = sorted({t for s in summary.values() for t in s["by_turn"]}, key=lambda t: (len(t), t))
    f = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
    head = ["model", "score", *[f"turn {t}" for t in turns], "scored", "failed"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for lab, s in summary.items():
        cells = [lab, f(s["mean"]), *[f(s["by_turn"].get(t, {}).get("mean")) for t in turns], str(s["scored"]),
                 str(s["failed"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
