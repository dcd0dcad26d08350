"""`aspd bench quality` (LLM judge, MT-Bench single-answer grading) and `aspd bench exact` (GSM8K final numbers):
the strict score parser, prompt selection, a run against a real loopback HTTP judge, exact-match extraction."""

from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serverutil import LoopbackEndpoint, chat_reply, send_json

from aspd.bench.data import SHIPPED_DIR, load_questions
from aspd.bench.exact import exact_summary, extract_number, gold_number, load_gold, score_exact
from aspd.bench.quality import (
    PROMPT_NAMES,
    ScoreParseError,
    default_reference_file,
    judge_messages,
    load_judge_prompts,
    load_references,
    parse_score,
    quality_summary,
)
from aspd.cli import main

# ---------------------------------------------------------------------------------------------- score parser


@pytest.mark.parametrize("reply, score", [
    ("The answer is fine.\n\nRating: [[7]]", 7.0),
    ("[[10]]", 10.0),
    ("[[1]]", 1.0),
    ("Rating: [[7.5]]", 7.5),
    ("[[10.0]]", 10.0),
])
def test_parse_score_ok(reply: str, score: float) -> None:
    assert parse_score(reply) == score


@pytest.mark.parametrize("reply, why", [
    ("Rating: [[11]]", "outside"),
    ("[[0]]", "outside"),
    ("[[10.5]]", "outside"),
    ("[[7]] and [[8]]", "exactly one"),
    ("[[7]] ... final: [[7]]", "exactly one"),  # even two equal ratings: ambiguous, ask again
    ("rating: 7", "no [["),
    ("Rating: [7]", "no [["),
    ("", "empty"),
    ("   \n", "empty"),
    (None, "empty"),
    ("[[ 7 ]]", "not a plain number"),  # decided: whitespace inside is a format violation (MT-Bench rejects it too)
    ("[[7/10]]", "not a plain number"),
    ("[[rating]]", "not a plain number"),
    ("[[-3]]", "not a plain number"),
])
def test_parse_score_rejects(reply: str | None, why: str) -> None:
    with pytest.raises(ScoreParseError, match=why.replace("[", r"\[")):
        parse_score(reply)


# ------------------------------------------------------------------------------------------ prompts, references

@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    """A bench dir with the real judge_prompts.jsonl (the copy shipped with the package) and a small reference
    file for question 101 (two turns) and 111 (one turn) named after mt_bench.jsonl."""
    d = tmp_path / "bench"
    (d / "reference_answer").mkdir(parents=True)
    shutil.copy(SHIPPED_DIR / "judge_prompts.jsonl", d / "judge_prompts.jsonl")
    refs = [{"question_id": 101, "choices": [{"index": 0, "turns": ["REF-101-T1", "REF-101-T2"]}]},
            {"question_id": 111, "choices": [{"index": 0, "turns": ["REF-111-T1"]}]}]
    (d / "reference_answer" / "mt_bench_gpt-4.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
    return d


def _row(qid: Any, cat: str, turn: int, label: str, text: str) -> dict[str, Any]:
    msgs = [{"role": "user", "content": f"Q{qid}-T1"}]
    if turn == 2:
        msgs += [{"role": "assistant", "content": f"A{qid}-T1-{label}"}, {"role": "user", "content": f"Q{qid}-T2"}]
    return {"id": str(qid), "category": cat, "turn": turn, "label": label, "messages": msgs, "text": text}


def test_prompt_selection(bench_dir: Path) -> None:
    prompts = load_judge_prompts(bench_dir / "judge_prompts.jsonl")
    assert set(prompts) == set(PROMPT_NAMES)
    ref_file = default_reference_file(bench_dir, "/somewhere/mt_bench.jsonl")
    assert ref_file == bench_dir / "reference_answer" / "mt_bench_gpt-4.jsonl"
    assert default_reference_file(bench_dir, "/x/gsm8k.jsonl") is None
    refs = load_references(ref_file)
    assert refs == {"101": ["REF-101-T1", "REF-101-T2"], "111": ["REF-111-T1"]}

    def pick(row: dict[str, Any]) -> tuple[str, str, str]:
        name, msgs = judge_messages(row, prompts, refs)
        assert [m["role"] for m in msgs] == ["system", "user"]
        assert msgs[0]["content"] == prompts[name].system_prompt
        return name, msgs[1]["content"], msgs[0]["content"]

    name, user, _ = pick(_row(81, "writing", 1, "m", "ANS"))
    assert name == "single-v1" and "Q81-T1" in user and "ANS" in user and "{" not in user
    name, user, _ = pick(_row(81, "writing", 2, "m", "ANS2"))
    assert name == "single-v1-multi-turn"
    assert user.index("Q81-T1") < user.index("A81-T1-m") < user.index("Q81-T2") < user.index("ANS2")
    name, user, _ = pick(_row(101, "reasoning", 1, "m", "ANS"))
    assert name == "single-math-v1" and "REF-101-T1" in user and "REF-101-T2" not in user
    name, user, _ = pick(_row(101, "reasoning", 2, "m", "ANS2"))
    assert name == "single-math-v1-multi-turn" and "REF-101-T1" in user and "REF-101-T2" in user
    # A reference-needing category without a reference (or without a second reference turn) falls back.
    assert pick(_row(125, "coding", 1, "m", "x"))[0] == "single-v1"
    assert pick(_row(111, "math", 1, "m", "x"))[0] == "single-math-v1"
    assert pick(_row(111, "math", 2, "m", "x"))[0] == "single-v1-multi-turn"
    # A reference exists but the category does not use one (MT-Bench: only math/reasoning/coding).
    assert pick(_row(101, "writing", 1, "m", "x"))[0] == "single-v1"
    with pytest.raises(ValueError, match="turns 1 and 2"):
        judge_messages({**_row(81, "writing", 2, "m", "x"), "turn": 3}, prompts, refs)


def test_quality_summary_counts() -> None:
    graded = [{"label": "a", "turn": 1, "category": "x", "score": 8.0}, {"label": "a", "turn": 2, "category": "x",
                                                                         "score": None},
              {"label": "a", "turn": 1, "category": "y", "score": 6.0}, {"label": "b", "turn": 1, "category": "x",
                                                                         "score": None}]
    s = quality_summary(graded)
    assert s["a"]["mean"] == 7.0 and s["a"]["scored"] == 2 and s["a"]["failed"] == 1
    assert s["a"]["by_category"]["x"] == {"mean": 8.0, "scored": 1, "failed": 1}
    assert s["a"]["by_turn"]["2"] == {"mean": None, "scored": 0, "failed": 1}
    assert s["b"] == {"mean": None, "scored": 0, "failed": 1, "by_turn": {"1": s["b"]["by_turn"]["1"]},
                      "by_category": {"x": {"mean": None, "scored": 0, "failed": 1}}}


# ------------------------------------------------------------------------------- end to end against a real server


class FakeJudge:
    """A chat-completions endpoint on a loopback port whose reply depends on a marker in the judged answer:
    GOOD -> "[[8]]", RETRY -> garbage on the first call then "[[6]]", NEVER -> never a parseable rating,
    REF -> "[[9]]", HTTP500 -> HTTP 500 every time."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.endpoint = LoopbackEndpoint(self.on_post)
        self.url = self.endpoint.url

    def on_post(self, handler: Any, body: dict[str, Any]) -> None:
        status, text = self.answer(body)
        payload = chat_reply(body["model"], text) if status == 200 else {"error": "injected"}
        send_json(handler, status, json.dumps(payload).encode())

    def answer(self, body: dict[str, Any]) -> tuple[int, str]:
        user = body["messages"][-1]["content"]
        marker = next(m for m in ("GOOD", "RETRY", "NEVER", "REF", "HTTP500") if f"ANSWER-{m}" in user)
        with self.lock:
            self.requests.append(body)
            self.seen[marker] += 1
            n = self.seen[marker]
        if marker == "HTTP500":
            return 500, ""
        if marker == "RETRY":
            return 200, ("I would say seven out of ten." if n == 1 else "Fine.\n\nRating: [[6]]")
        if marker == "NEVER":
            return 200, ["rating: 7", "[[7]] or maybe [[8]]", "[[11]]"][(n - 1) % 3]
        if marker == "REF":
            assert "REF-101-T1" in user
            return 200, "Matches the reference. Rating: [[9]]"
        return 200, "Rating: [[8]]"

    def close(self) -> None:
        self.endpoint.close()


@pytest.fixture
def judge() -> Iterator[FakeJudge]:
    j = FakeJudge()
    yield j
    j.close()


def test_quality_end_to_end(tmp_path: Path, bench_dir: Path, judge: FakeJudge, capsys: pytest.CaptureFixture) -> None:
    rows = [_row(81, "writing", 1, "aspd", "ANSWER-GOOD"),
            _row(81, "writing", 2, "aspd", "ANSWER-RETRY"),
            _row(101, "reasoning", 1, "aspd", "ANSWER-REF"),
            _row(81, "writing", 1, "seq", "ANSWER-NEVER"),
            _row(82, "writing", 1, "seq", "ANSWER-HTTP500"),
            _row(83, "writing", 1, "seq", "ANSWER-GOOD and more")]
    answers = tmp_path / "run" / "results.json"
    answers.parent.mkdir()
    answers.write_text(json.dumps({"config": {"bench_file": "/data/mt_bench.jsonl"}, "rows": rows}))
    out = tmp_path / "q.json"
    argv = ["bench", "quality", "--answers", str(answers), "--judge-url", judge.url, "--judge-model", "judge-m",
            "--bench-dir", str(bench_dir), "--out", str(out), "--retries", "2", "--timeout", "5",
            "--concurrency", "3", "--backoff", "0.01", "--cache-dir", str(tmp_path / "cache"), "--update"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| aspd | 7.67 |" in table and "| seq | 8.00 |" in table

    report = json.loads(out.read_text())
    by = {(r["id"], r["turn"], r["label"]): r for r in report["rows"]}
    assert [(r["id"], r["turn"], r["label"]) for r in report["rows"]] == [(r["id"], r["turn"], r["label"])
                                                                            for r in rows]
    good = by[("81", 1, "aspd")]
    assert good["score"] == 8.0 and good["error"] is None and good["attempts"] == 1 and good["prompt"] == "single-v1"
    retry = by[("81", 2, "aspd")]
    assert retry["score"] == 6.0 and retry["attempts"] == 2 and retry["error"] is None
    assert retry["prompt"] == "single-v1-multi-turn" and retry["judge_raw"].endswith("[[6]]")
    ref = by[("101", 1, "aspd")]
    assert ref["score"] == 9.0 and ref["prompt"] == "single-math-v1"
    never = by[("81", 1, "seq")]
    assert never["score"] is None and never["attempts"] == 3 and never["judge_raw"] == "[[11]]"
    assert never["error"].startswith("failed after 3 attempt(s)") and "outside 1..10" in never["error"]
    assert "no [[rating]]" in never["error"] and "exactly one" in never["error"]
    http = by[("82", 1, "seq")]
    # A request that failed for good (after the backend's own 3 HTTP attempts) is not asked again.
    assert http["score"] is None and http["judge_raw"] is None and "HTTP 500" in http["error"]
    assert http["attempts"] == 1 and http["error"].startswith("failed after 1 attempt(s); request failed")

    s = report["summary"]
    assert s["aspd"]["mean"] == pytest.approx(23 / 3, abs=1e-3) and s["aspd"]["failed"] == 0
    assert s["seq"]["scored"] == 1 and s["seq"]["failed"] == 2
    assert s["aspd"]["by_category"]["reasoning"] == {"mean": 9.0, "scored": 1, "failed": 0}
    assert report["config"]["judge_model"] == "judge-m" and report["config"]["reference"].endswith("gpt-4.jsonl")

    # A first judge call is greedy; a retry is a fresh call with the next seed, sampled (greedy would repeat).
    assert all(b["model"] == "judge-m" for b in judge.requests)
    retries = [(b["seed"], b["temperature"]) for b in judge.requests if "ANSWER-RETRY" in b["messages"][-1]["content"]]
    assert retries == [(0, 0.0), (1, 0.7)]
    assert all(b["temperature"] == 0.0 for b in judge.requests if "ANSWER-GOOD" in b["messages"][-1]["content"])

    updated = json.loads(answers.read_text())
    assert [r["judge_score"] for r in updated["rows"]] == [8.0, 6.0, 9.0, None, None, 8.0]
    assert updated["rows"][3]["judge_error"].startswith("failed")
    assert updated["quality"]["summary"] == s

    # A rerun hits the reply cache for every answered call: no new request except the failing HTTP one.
    before = Counter(judge.seen)
    assert main([*argv[:-1], "--out", str(tmp_path / "q2.json")]) == 0
    assert {k: judge.seen[k] - before[k] for k in before} == {"GOOD": 0, "RETRY": 0, "NEVER": 0, "REF": 0,
                                                             "HTTP500": 3}
    assert json.loads((tmp_path / "q2.json").read_text())["summary"] == s

    # --limit 1 grades the answers to the first question only, every model and turn of it.
    assert main([*argv[:-1], "--out", str(tmp_path / "q3.json"), "--limit", "1"]) == 0
    limited = json.loads((tmp_path / "q3.json").read_text())
    assert [(r["id"], r["turn"], r["label"]) for r in limited["rows"]] == [("81", 1, "aspd"), ("81", 2, "aspd"),
                                                                         ("81", 1, "seq")]
    assert limited["config"]["limit"] == 1


def test_quality_bad_inputs(tmp_path: Path, bench_dir: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": [{"id": 1}]}')
    base = ["bench", "quality", "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m",
            "--bench-dir", str(bench_dir)]
    assert main([*base, "--answers", str(bad)]) != 0
    assert "not a results.json" in capsys.readouterr().err
    assert main([*base, "--answers", str(bad), "--retries", "-1"]) != 0
    assert "--retries" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ exact match


@pytest.mark.parametrize("text, value", [
    ("So the answer is 18.", 18.0),
    ("She pays $1,234.50 in total", 1234.5),
    ("3 apples and 4 pears make 7", 7.0),
    ("The temperature drops to -5 degrees", -5.0),
    ("#### 42", 42.0),
    ("no digits here", None),
    ("", None),
    (None, None),
])
def test_extract_number(text: str | None, value: float | None) -> None:
    assert extract_number(text) == value


def test_gold_number() -> None:
    assert gold_number("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == 72.0
    assert gold_number("... #### $1,000") == 1000.0
    assert gold_number("no marker 5") is None
    assert gold_number("#### none") is None


GSM8K = [
    {"question": "Natalia sold 48 clips in April and half as many in May. How many altogether?",
     "answer": "48/2 = <<48/2=24>>24\n48+24 = <<48+24=72>>72\n#### 72"},
    {"question": "Weng earns $12 an hour. She did 50 minutes of babysitting. How much did she earn?",
     "answer": "12/60 = 0.2 per minute; 0.2*50 = 10\n#### 10"},
]


def test_exact_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gold_file = tmp_path / "gsm8k.jsonl"
    gold_file.write_text("".join(json.dumps(g) + "\n" for g in GSM8K))
    # The same file is a question set for `bench speed`: one turn each, ids = line numbers (what rows carry).
    qs = load_questions(gold_file)
    assert [(q.id, q.category, len(q.turns)) for q in qs] == [("1", "general", 1), ("2", "general", 1)]
    assert load_gold(gold_file) == {"1": 72.0, "2": 10.0}
    rows = [_row(1, "general", 1, "a", "24 + 48 = 72 clips."), _row(2, "general", 1, "a", "She earned $10.00."),
            _row(1, "general", 1, "b", "The answer is 70"), _row(2, "general", 1, "b", "I cannot tell."),
            _row(9, "general", 1, "b", "99")]  # no gold: not scored
    scored = score_exact(rows, load_gold(gold_file))
    assert [r["correct"] for r in scored] == [True, True, False, False]
    assert exact_summary(scored) == {"a": {"accuracy": 1.0, "correct": 2, "total": 2, "no_number": 0},
                                     "b": {"accuracy": 0.0, "correct": 0, "total": 2, "no_number": 1}}
    answers = tmp_path / "results.json"
    answers.write_text(json.dumps({"config": {}, "rows": rows}))
    assert main(["bench", "exact", "--answers", str(answers), "--gold", str(gold_file)]) == 0
    assert "| a | 1.000 | 2 | 2 | 0 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "exact.json").read_text())["summary"]["b"]["accuracy"] == 0.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "no marker"}\n')
    assert main(["bench", "exact", "--answers", str(answers), "--gold", str(bad)]) != 0
    assert "no number after '####'" in capsys.readouterr().err
