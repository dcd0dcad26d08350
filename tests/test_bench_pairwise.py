"""`aspd bench pairwise`: prompt selection, the batched verdict likelihoods, both-orders outcomes, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from aspd.bench.data import SHIPPED_DIR
from aspd.bench.pairwise import (
    combine,
    judge_pairs,
    load_pair_prompts,
    pair_messages,
    pairs,
    pairwise_summary,
    verdict_logprobs,
)
from aspd.cli import main
from aspd.sample import prompt_ids
from aspd.tokens import text_ids

PROMPTS = load_pair_prompts(SHIPPED_DIR / "judge_prompts.jsonl")
QUESTIONS = ["How do I keep basil alive?", "Name two uses of copper.", "Why is the sky blue?", "Hi?"]


def row(label: str, qid: str, text: str, turn: int = 1, category: str = "generic") -> dict[str, Any]:
    msgs = [{"role": "user", "content": QUESTIONS[int(qid) - 1]}]
    if turn == 2:
        msgs += [{"role": "assistant", "content": f"{label} first answer"}, {"role": "user", "content": "More?"}]
    # run_index counts every answer of a run, so it differs between labels; the seed is per question.
    return {"id": qid, "turn": turn, "seed": int(qid), "run_index": len(label) + int(qid), "category": category,
            "label": label, "messages": msgs, "text": text}


ROWS = [row("aspd", "1", "Water it <|title|>daily."), row("seq", "1", "Water it daily, and give it sun."),
        row("aspd", "2", "Wires and coins."), row("seq", "2", "Copper."),
        row("aspd", "3", "Rayleigh scattering of sunlight."), row("seq", "3", "Blue."),
        row("seq", "4", "an answer only the baseline gave")]


@pytest.fixture(scope="module")
def judge(tiny_folder, one_thread):
    from aspd.loading import load_model

    return load_model(str(tiny_folder), device="cpu", dtype="float32")


def test_pairs_match_question_turn_and_run():
    got = pairs(ROWS, "aspd", "seq")
    assert [(a["id"], b["id"], a["label"], b["label"]) for a, b in got] == [
        (q, q, "aspd", "seq") for q in ("1", "2", "3")]
    assert pairs(ROWS, "aspd", "nobody") == []


def test_prompt_choice_and_visible_text():
    name, msgs = pair_messages(ROWS[0], ROWS[1], PROMPTS, {})
    assert name == "pair-v2" and msgs[0]["role"] == "system" and "<|title|>" not in msgs[1]["content"]
    body = msgs[1]["content"]
    assert body.index("Water it daily.") < body.index("Water it daily, and give it sun.")  # A first, then B
    math = row("aspd", "2", "4", category="math")
    name, msgs = pair_messages(math, row("seq", "2", "5", category="math"), PROMPTS, {"2": ["four", "x"]})
    assert name == "pair-math-v1" and "four" in msgs[1]["content"]
    a2, b2 = row("aspd", "3", "second A", turn=2), row("seq", "3", "second B", turn=2)
    name, msgs = pair_messages(a2, b2, PROMPTS, {})
    assert name == "pair-v2-multi-turn"
    assert all(s in msgs[1]["content"] for s in ("aspd first answer", "seq first answer", "second A", "More?"))
    with pytest.raises(ValueError, match="turns 1 and 2"):
        pair_messages(row("aspd", "1", "x", turn=3), row("seq", "1", "y", turn=3), PROMPTS, {})


def test_verdict_logprobs_equal_unbatched_forwards(judge):
    model, tok = judge
    _, msgs = pair_messages(ROWS[0], ROWS[1], PROMPTS, {})
    got = verdict_logprobs(model, tok, msgs)
    prompt = prompt_ids(tok, msgs)
    for v in ("A", "B", "C"):
        cont = text_ids(tok, f"[[{v}]]")
        ids = torch.tensor([[*prompt, *cont]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        want = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(cont))
        assert got[v] == pytest.approx(want, abs=1e-4)
    assert len(set(got.values())) == 3


def test_combine_needs_both_orders():
    assert combine("A", "B") == "win" and combine("B", "A") == "loss"
    assert {combine(x, y) for x, y in [("A", "A"), ("B", "B"), ("C", "A"), ("A", "C"), ("C", "C")]} == {"tie"}


def test_swapping_model_and_baseline_mirrors_every_outcome(judge):
    model, tok = judge
    fwd = judge_pairs(model, tok, ROWS, "aspd", "seq", PROMPTS, {})
    rev = judge_pairs(model, tok, ROWS, "seq", "aspd", PROMPTS, {})
    mirror = {"win": "loss", "loss": "win", "tie": "tie"}
    assert len(fwd) == 3 and [mirror[r["outcome"]] for r in fwd] == [r["outcome"] for r in rev]
    for r in fwd:  # the verdicts are the argmax of the likelihoods, and the model's first read is the other's second
        assert r["model_first"] == max(r["logprobs_first"], key=r["logprobs_first"].get)
    assert [r["logprobs_first"] for r in fwd] == [r["logprobs_second"] for r in rev]
    s = pairwise_summary(fwd)["all"]
    assert s["win"] + s["tie"] + s["loss"] == s["judged"] == 3
    assert s["win_tie_rate"] == pytest.approx((s["win"] + s["tie"]) / 3)


def test_cli_end_to_end_and_one_line_errors(tiny_folder, tmp_path: Path, capsys, one_thread):
    res = tmp_path / "results.json"
    res.write_text(json.dumps({"config": {"models": [{"label": "aspd", "role": "model"},
                                                     {"label": "seq", "role": "baseline"}]}, "rows": ROWS}))
    assert main(["bench", "pairwise", "--answers", str(res), "--judge-model", str(tiny_folder),
                 "--device", "cpu", "--bench-dir", str(SHIPPED_DIR)]) == 0
    out = json.loads((tmp_path / "pairwise_aspd_vs_seq.json").read_text())
    assert out["config"]["model"] == "aspd" and out["config"]["baseline"] == "seq"
    assert out["summary"]["all"]["judged"] == 3 and len(out["records"]) == 3
    assert "| all | 3/3 |" in capsys.readouterr().out
    assert main(["bench", "pairwise", "--answers", str(res), "--judge-model", str(tiny_folder),
                 "--device", "cpu", "--baseline", "gpt-9"]) == 2
    err = capsys.readouterr().err
    assert "'gpt-9' answered nothing" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_debiased_preference_sees_through_a_judge_that_favours_the_first_answer():
    """A judge that always picks the answer it reads first makes every question a tie; with the order balanced,
    the margins still say which answer it prefers, and a lopsided split has a small sign-test p-value."""
    from aspd.bench.pairwise import preference, sign_test

    def rec(q: float, bias: float = 2.0) -> dict:  # q > 0: the judge prefers the model by q nats of log-odds
        first = {"A": bias / 2 + q / 2, "B": -bias / 2 - q / 2, "C": -5.0}
        second = {"A": bias / 2 - q / 2, "B": -bias / 2 + q / 2, "C": -5.0}
        return {"turn": 1, "outcome": combine("A", "A"), "model_first": "A", "model_second": "A",
                "logprobs_first": first, "logprobs_second": second}

    margins = [0.3] * 15 + [-0.2] * 3 + [0.0] * 2
    assert [preference(rec(q)) for q in margins] == pytest.approx(margins)
    s = pairwise_summary([rec(q) for q in margins])["all"]
    assert s["tie"] == 20 and s["a_verdict_share"] == 1.0  # the verdicts see only the position
    d = s["debiased"]
    assert (d["model"], d["baseline"], d["even"]) == (15, 3, 2) and d["model_share"] == 0.75
    assert d["mean_log_odds"] == pytest.approx((15 * 0.3 - 3 * 0.2) / 20)
    assert d["sign_test_p"] == pytest.approx(sign_test(15, 18)) and d["sign_test_p"] < 0.01
    assert sign_test(9, 18) == 1.0 and sign_test(0, 0) == 1.0
    assert sign_test(0, 3) == pytest.approx(0.25)  # 2 * (1/8)


def test_recipes_resummarize_stored_verdicts_and_cut_control_answers(tmp_path: Path, monkeypatch, capsys):
    """pairwise_resummarize.py adds the debiased preference to an old output from its stored likelihoods;
    pairwise_control.py pairs every answer with its first half, cut at a line or sentence end."""
    import runpy

    recipe = Path(__file__).resolve().parents[1] / "scripts" / "recipe"
    rec = {"id": "1", "turn": 1, "outcome": "tie", "model_first": "A", "model_second": "A",
           "logprobs_first": {"A": -0.1, "B": -2.5, "C": -4.0}, "logprobs_second": {"A": -0.2, "B": -2.0, "C": -4.0}}
    old = tmp_path / "pairwise.json"
    old.write_text(json.dumps({"config": {}, "summary": {"all": {"tie": 1}}, "records": [rec]}))
    monkeypatch.setattr("sys.argv", ["x", str(old)])
    runpy.run_path(str(recipe / "pairwise_resummarize.py"), run_name="__main__")
    d = json.loads(old.read_text())["summary"]["all"]["debiased"]
    assert (d["model"], d["baseline"]) == (1, 0) and d["mean_log_odds"] == pytest.approx((2.4 - 1.8) / 2)

    text = "First point here. Second point follows.\nThird line is longer than the others by far."
    res, out = tmp_path / "results.json", tmp_path / "control.json"
    res.write_text(json.dumps({"rows": [{**ROWS[1], "text": text}, ROWS[0]]}))  # a seq row, an aspd row
    monkeypatch.setattr("sys.argv", ["x", str(res), "seq", str(out)])
    runpy.run_path(str(recipe / "pairwise_control.py"), run_name="__main__")
    rows = json.loads(out.read_text())["rows"]
    assert [r["label"] for r in rows] == ["seq", "seq-half"]
    assert rows[1]["text"] == "First point here. Second point follows." and rows[1]["id"] == rows[0]["id"]
