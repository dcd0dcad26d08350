"""Span rewriter (an LLM groups numbered paragraphs and labels them; rules set heads), its offline request /
reply files, and the list-marker check over every sample of a transformed file."""

from __future__ import annotations

import asyncio
import gzip
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aspd.markup import MarkupError, flatten, is_head, parse, same_text
from aspd.pipeline.backends import ChatBackend
from aspd.pipeline.prompts import DEFAULT_PROMPTS
from aspd.pipeline.rules import RuleRewriter, marker_problems, markup_for
from aspd.pipeline.runner import read_output, sample_from_record
from aspd.pipeline.spans import (
    EXAMPLE_TITLES,
    SpanRewriter,
    numbered_paragraphs,
    parse_span_reply,
    read_replies,
    split_units,
    write_requests,
)
from aspd.pipeline.types import Sample
from aspd.token_text import to_token_text

DATA = Path(__file__).parent / "data"
TEACHER = [json.loads(line) for line in (DATA / "teacher_style_answers.jsonl").read_text().splitlines()]
BY_ID = {r["id"]: r for r in TEACHER}


def sample(rid: str) -> Sample:
    return sample_from_record(BY_ID[rid], 1)


def reply(*groups: list[tuple[list[int], str]]) -> str:
    return json.dumps({"groups": [[{"paragraphs": p, "title": t} for p, t in g] for g in groups]})


# ---------------------------------------------------------------------------------------------- units


def test_units_split_paragraphs_items_headings_and_keep_code_whole() -> None:
    answer = ("Intro line.\n\n**Diet**\nEat well.\n\n- one item here\n- two item here\n  nested text\n"
              "Text right before code:\n```python\nx = 1\n\ny = 2\n```\nAfter code.\n\n## Head\nBody.")
    units = split_units(answer)
    texts = [answer[u.start : u.end] for u in units]
    # (an unindented line right after an item continues it, as in Markdown)
    assert texts == ["Intro line.", "**Diet**\nEat well.", "- one item here",
                     "- two item here\n  nested text\nText right before code:", "```python\nx = 1\n\ny = 2\n```",
                     "After code.", "## Head\nBody."]
    assert [u.code for u in units] == [False] * 4 + [True] + [False] * 2
    shown = numbered_paragraphs(answer, units)
    assert "[5] (code block, 3 line(s); never part of a group)" in shown and "x = 1" not in shown
    assert shown.startswith("[1] Intro line.\n[2] **Diet**\nEat well.\n[3] - one item here")


# ---------------------------------------------------------------------------------------------- replies

T4 = BY_ID["t4"]["answer"]  # intro, three prose paragraphs, closing sentence
T4_UNITS = split_units(T4)


def test_good_reply_labels_prose_and_flattens_back_exactly() -> None:
    raw = "```json\n" + reply([([2], "Frequent public transport"), ([3], "Charging for peak driving"),
                               ([4], "Protected cycle lanes")]) + "\n```"
    r = parse_span_reply(raw, T4, T4_UNITS)
    assert r.ok and r.skipped == []
    (run,) = r.runs
    assert [(it.title, it.head) for it in run.items] == [("Frequent public transport", False),
                                                          ("Charging for peak driving", False),
                                                          ("Protected cycle lanes", False)]
    c = asyncio.run(SpanRewriter(replies={"t4": [raw]}).rewrite(sample("t4"), 3))[0]
    assert c.source == "spans" and c.has_parallel and c.markup is not None
    doc = parse(c.markup)
    assert same_text(flatten(doc), T4) and len(doc.groups) == 1  # exact but for the blank lines between branches
    assert doc.groups[0].branches[0].text == T4[T4_UNITS[1].start : T4_UNITS[1].end]  # a label: the whole paragraph


def test_heads_come_from_the_rules_not_the_model() -> None:
    answer = BY_ID["t1"]["answer"]  # "**Saving money**\nMeals made ..." per aspect
    units = split_units(answer)
    r = parse_span_reply(reply([([2], "Cheaper meals"), ([3], "Healthier food"), ([4], "A lasting skill")]), answer,
                         units)
    assert r.ok
    assert [it.title for it in r.runs[0].items] == ["**Saving money**", "**Eating better**", "**Building a skill**"]
    assert all(it.head for it in r.runs[0].items)
    # Heads that collide are made unique by the rules, as for the rule rewriter, whatever the model wrote.
    same = "Two ways.\n\n- Use a cache for reads in the API\n- Use a cache for writes in the API"
    r = parse_span_reply(reply([([2], "Read cache"), ([3], "Read cache")]), same, split_units(same))
    assert r.ok and [it.title for it in r.runs[0].items] == ["- Use a cache for reads", "- Use a cache for writes"]


@pytest.mark.parametrize(("raw", "problem"), [
    ("I think paragraphs 2-4 are parallel.", "no JSON object"),
    ('{"groups": [[{"paragraphs": [2], "title": "A b"}, ', "does not parse"),
    ('{"parallel": true}', 'needs a "groups" list'),
    (reply([([2], "Frequent transit")]), "at least 2 branches"),
    (reply([([2], "Frequent transit"), ([9], "Road pricing")]), "outside 1..5"),
    (reply([([2, 4], "Frequent transit"), ([5], "Road pricing")]), "are not consecutive"),
    (reply([([2], "Frequent transit"), ([4], "Bike lanes")]), "not right after the previous branch (3)"),
    (reply([([2], "Frequent transit"), ([3], "Road pricing")], [([3], "Bike lanes"), ([4], "End")]),
     "overlaps an earlier group"),
    (reply([([2], "Point 1"), ([3], "Road pricing")]), "'Point 1' is a placeholder"),
    (reply([([2], "Title"), ([3], "Road pricing")]), "'Title' is a placeholder"),
    (reply([([2], "Kitchen appliances"), ([3], "Road pricing")]), "'Kitchen appliances' is a placeholder"),
    (reply([([2], "..."), ([3], "Road pricing")]), "is a placeholder"),
    (reply([([2], "Road pricing"), ([3], "road pricing")]), "'road pricing' is used twice"),
    (reply([([2], "Public transport that is"), ([3], "Road pricing")]), "only repeats the first words"),
    (reply([([2], "A title far longer than six words here"), ([3], "Road pricing")]), "longer than 6 words"),
    ('{"groups": [[{"paragraphs": [2]}, {"paragraphs": [3], "title": "Road pricing"}]]}', "has no title"),
    # What the real 1.5B teacher did first: the opening as one branch and "everything else" as another.
    (reply([([1, 2], "Tools and transit"), ([3], "Road pricing")]), "includes paragraph [1]"),
    (reply([([2, 3], "Transit and pricing"), ([4, 5], "Cycling and more")]), "the closing summary"),

    ('{"groups": [[{"paragraphs": "2", "title": "x y"}, {"paragraphs": [3], "title": "Road pricing"}]]}',
     '"paragraphs": a list of paragraph numbers'),
])
def test_bad_replies_are_rejected_with_reasons(raw: str, problem: str) -> None:
    r = parse_span_reply(raw, T4, T4_UNITS)
    assert not r.ok and r.runs == []
    assert any(problem in p for p in r.problems), r.problems


def test_the_teachers_second_try_is_rejected_too() -> None:
    """Round two of the real probe: the first point, then "the rest" (two titled points and the closing)."""
    answer = BY_ID["t9"]["answer"]
    units = split_units(answer)
    r = parse_span_reply(reply([([2], "Money troubles"), ([3, 4, 5], "Causes and their interplay")]), answer, units)
    assert r.problems == ["group 1: includes paragraph [5], the closing summary (it stays outside groups)"]
    r = parse_span_reply(reply([([2], "Money troubles"), ([3, 4], "Society and ideas")]), answer, units)
    assert r.problems == ["group 1: branch 2 holds several points (paragraph [4] opens a point of its own)"]
    assert parse_span_reply(reply([([2], "Money"), ([3], "Estates"), ([4], "Ideas")]), answer, units).ok


def test_opening_and_closing_branches_at_the_edges_are_trimmed() -> None:
    """Round three of the real probe: one paragraph per point, but the opening and the closing listed too."""
    answer = BY_ID["t9"]["answer"]
    raw = reply([([1], "Main causes of the French Revolution"), ([2], "Financial crisis"), ([3], "Social inequality"),
                 ([4], "Enlightenment ideas"), ([5], "Pressure on the Estates-General")])
    r = parse_span_reply(raw, answer, split_units(answer))
    assert r.ok and [it.title for it in r.runs[0].items] == ["Financial crisis:", "Social inequality:",
                                                             "Enlightenment ideas:"]
    # Its labels for T4's prose were the paragraphs' first words: rejected, so a retry round asks again.
    raw = reply([([1], "Tools to ease traffic"), ([2], "Public transport"), ([3], "Congestion pricing"),
                 ([4], "Safe cycling infrastructure"), ([5], "Together these measures")])
    r = parse_span_reply(raw, T4, T4_UNITS)
    assert [p.split(":")[0] for p in r.problems] == ["group 1, branch 1", "group 1, branch 2", "group 1, branch 3"]
    assert "only repeats the first words" in r.problems[0]
    # Round one's "opening | everything else": once the opening goes, one branch is left, so no group.
    r = parse_span_reply(reply([([1], "Tools to ease traffic"), ([2, 3, 4, 5], "Specific measures")]), T4, T4_UNITS)
    assert r.ok and r.runs == [] and r.skipped == ["group 1 left serial: under 2 branches without the opening and "
                                                   "closing paragraphs"]


def test_a_prose_branch_holds_one_point() -> None:
    answer = "\n\n".join(["Intro."] + [f"Point {w} is made in this paragraph." for w in "abcdef"] + ["Bye."])
    units = split_units(answer)
    assert parse_span_reply(reply([([2], "First idea"), ([3, 4], "Second idea")]), answer, units).ok
    r = parse_span_reply(reply([([2], "First idea"), ([3, 4, 5], "Other ideas")]), answer, units)
    assert r.problems == ["group 1: branch 2 spans paragraphs 3-5: give each point its own branch (at most 2 "
                          "paragraphs of plain text per branch)"]
    # A section under a heading may hold more paragraphs: the rules give it a head.
    headed = answer.replace("Point c", "## Point c\n\nPoint c")
    units = split_units(headed)
    assert parse_span_reply(reply([([2, 3], "First ideas"), ([4, 5, 6], "Heading part")]), headed, units).ok


def test_code_is_never_part_of_a_group() -> None:
    answer = "Intro.\n\nFirst paragraph of text.\n\n```\ncode\n```\n\nSecond paragraph of text."
    units = split_units(answer)
    r = parse_span_reply(reply([([2], "First part"), ([3], "Code part")]), answer, units)
    assert r.problems == ["group 1, branch 2 includes a code block (code is never part of a group)"]


def test_example_titles_are_the_prompts_own() -> None:
    assert EXAMPLE_TITLES == {"kitchen appliances", "efficient lighting", "keeping heat inside",
                              "learning the guitar", "learning the piano"}


def test_empty_groups_is_a_valid_no() -> None:
    r = parse_span_reply('{"groups": []}', T4, T4_UNITS)
    assert r.ok and r.runs == []
    out = asyncio.run(SpanRewriter(replies={"t4": ['{"groups": []}']}).rewrite(sample("t4"), 3))
    assert [(c.source, c.has_parallel) for c in out] == [("spans", False)]


# ---------------------------------------------------------------------------------------------- rewriter


def test_offline_bad_or_missing_reply_gives_a_retry_request_and_rule_fallback() -> None:
    retries: list[dict[str, Any]] = []
    bad = reply([([2], "Point 1"), ([3], "Point 2")])
    rw = SpanRewriter(replies={"t4": [bad]}, fallback=RuleRewriter(), retry=retries.append)
    out = asyncio.run(rw.rewrite(sample("t4"), 3))
    assert [c.source for c in out] == ["spans", "rules:outer"]
    assert out[0].has_parallel is None and "'Point 1' is a placeholder" in out[0].problems[0]
    (req,) = retries
    assert req["id"] == "t4" and [m["role"] for m in req["messages"]] == ["system", "user", "assistant", "user"]
    assert req["messages"][2]["content"] == bad and "'Point 1' is a placeholder" in req["messages"][3]["content"]
    # No reply at all: the original request goes to the retry file.
    asyncio.run(rw.rewrite(sample("t1"), 3))
    assert [m["role"] for m in retries[1]["messages"]] == ["system", "user"] and retries[1]["id"] == "t1"
    # For paragraphs that open with a head the model's labels are not used, so 'Point 1' costs nothing there.
    out = asyncio.run(SpanRewriter(replies={"t1": [bad]}).rewrite(sample("t1"), 3))
    assert [(c.source, c.has_parallel) for c in out] == [("spans", True)]
    # A short answer asks nothing and retries nothing.
    assert asyncio.run(rw.rewrite(sample("t5"), 3))[0].source == "rules" and len(retries) == 2


class Replay(ChatBackend):
    """A ChatBackend whose model is a list of recorded replies, asked in order."""

    name = "replay"

    def __init__(self, replies: list[str]) -> None:
        super().__init__()
        self.replies, self.asked = list(replies), []

    async def complete(self, messages: list[dict[str, str]], *, judge: bool, count: int) -> list[str | None]:
        self.asked.append(messages)
        return [self.replies.pop(0) for _ in range(count)]


def test_online_bad_reply_is_asked_again_with_its_problems() -> None:
    good = reply([([2], "Frequent transit"), ([3], "Road pricing"), ([4], "Cycling lanes")])
    chat = Replay(["not json", good])
    (c,) = asyncio.run(SpanRewriter(chat, rounds=2).rewrite(sample("t4"), 1))
    assert c.has_parallel and c.raw == good
    assert len(chat.asked) == 2 and "no JSON object" in chat.asked[1][-1]["content"]
    chat = Replay(["not json", "still not"])
    (c,) = asyncio.run(SpanRewriter(chat, rounds=2).rewrite(sample("t4"), 1))
    assert c.has_parallel is None and c.problems == ("no JSON object in the reply",)


def test_online_through_a_real_local_model() -> None:
    """The online path end to end with a (tiny, random) Transformers model: its replies are unusable, so
    each is asked again once and the sample falls back to the rules."""
    from aspd.pipeline.backends.local import LocalBackend
    from aspd.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    short = replace(DEFAULT_PROMPTS, span_system="Group the paragraphs; reply with JSON.")  # fits its context
    be = LocalBackend("tiny", model=tiny_model("llama", len(tok)), tokenizer=tok, max_new_tokens=6, prompts=short)
    small = Sample("s", [{"role": "user", "content": "Tips?"}], "Two tips.\n\n- Rest well at night\n- Eat less sugar", {})
    out = asyncio.run(SpanRewriter(be, fallback=RuleRewriter(min_words=0), min_words=0).rewrite(small, 2))
    assert [c.source for c in out] == ["spans", "spans", "rules:outer"]
    assert all(c.has_parallel is None and c.problems for c in out[:2])


def test_request_and_reply_files(tmp_path: Path) -> None:
    samples = [sample(r["id"]) for r in TEACHER]
    counts = write_requests(samples, tmp_path / "req.jsonl")
    reqs = [json.loads(line) for line in (tmp_path / "req.jsonl").read_text().splitlines()]
    assert counts == {"samples": 10, "requests": len(reqs)}
    assert {r["id"] for r in reqs} == {"t1", "t2", "t4", "t7", "t8", "t9", "t10"}  # t3, t5, t6: under 100 words
    assert reqs[0]["messages"][0]["content"] == DEFAULT_PROMPTS.span_system
    assert "[2] **Saving money**\nMeals made" in reqs[0]["messages"][1]["content"]
    # `aspd distill` keeps the fields and adds `answer`; a second round's file adds to the first.
    with gzip.open(tmp_path / "rep.jsonl.gz", "wt") as f:
        f.write(json.dumps({"id": "t4", "messages": [], "answer": "x", "finish": "length"}) + "\n")
    (tmp_path / "rep2.jsonl").write_text(json.dumps({"id": "t4", "answer": "y"}) + "\n\n")
    assert read_replies([tmp_path / "rep.jsonl.gz", tmp_path / "rep2.jsonl"]) == {"t4": ["x", "y"]}
    (tmp_path / "bad.jsonl").write_text('{"id": "t4"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: expected"):
        read_replies([tmp_path / "bad.jsonl"])


# ---------------------------------------------------------------------------------------------- end to end


def _real_answers(n: int) -> list[dict[str, Any]]:
    """The first n self-distilled answers of each shipped set (their questions are not needed by the rules)."""
    out = []
    for name in ("answers_smollm2-135m", "answers_qwen2.5-coder-0.5b"):
        with gzip.open(Path(__file__).parents[1] / "data" / "distill" / f"{name}.jsonl.gz", "rt") as f:
            for line, _ in zip(f, range(n), strict=False):
                r = json.loads(line)
                out.append({"id": f"{name}:{r['id']}", "question": "(see the prompt set)", "answer": r["answer"]})
    return out


def test_list_markers_correct_in_every_transformed_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Transform teacher-style and real answers through the CLI (rules, and spans with recorded replies),
    then check every sample of the output: markers belong to heads, numbering runs n, n+1, ..., the text
    flattens back, and the token format writes and reads back."""
    from aspd.cli import main

    records = TEACHER + _real_answers(60)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in records))
    # Span replies as a teacher would write them: labels for the prose answer, one bad reply, the rest absent.
    (tmp_path / "rep.jsonl").write_text(
        json.dumps({"id": "t4", "answer": reply([([2], "Frequent transit"), ([3], "Road pricing"),
                                                 ([4], "Cycling lanes")])}) + "\n"
        + json.dumps({"id": "t9", "answer": reply([([2], "Money"), ([2], "Money")])}) + "\n")
    assert main(["transform", "--input", str(inp), "--span-requests", str(tmp_path / "req.jsonl")]) == 0
    req_ids = [json.loads(line)["id"] for line in (tmp_path / "req.jsonl").read_text().splitlines()]
    assert "t4" in req_ids and "t5" not in req_ids
    assert main(["transform", "--input", str(inp), "--span-requests", "r.jsonl", "--output", "o.jsonl"]) == 2
    assert "does not take --output" in capsys.readouterr().err
    assert main(["transform", "--input", str(inp), "--output", "o.jsonl", "--rewriter", "rules",
                 "--span-replies", "x"]) == 2
    assert "is for --rewriter spans" in capsys.readouterr().err
    outputs = {}
    for name, extra in (("rules", ["--rewriter", "rules"]),
                        ("spans", ["--rewriter", "spans", "--span-replies", str(tmp_path / "rep.jsonl")])):
        out = tmp_path / f"{name}.jsonl"
        assert main(["transform", "--input", str(inp), "--output", str(out), "--no-progress", *extra]) == 0
        outputs[name] = {r["id"]: r for r in read_output(out)}
        summary = json.loads(Path(f"{out}.summary.json").read_text())
        assert summary["checks"]["markers"]["ran"] >= 5 and summary["parallel_samples"] >= 10
    for recs in outputs.values():
        assert len(recs) == len(records)
        for r in recs.values():
            doc = parse(r["markup"])
            assert flatten(doc) == r["answer"] or r["answer"].split() == flatten(doc).split()
            for g in doc.groups:
                assert marker_problems(g) == [], (r["id"], g)
            assert parse(render_back(doc)) == doc
    spans = outputs["spans"]
    assert spans["t4"]["parallel"] and spans["t4"]["candidates"][0]["source"] == "spans"
    assert [b.title for b in parse(spans["t4"]["markup"]).groups[0].branches] == [
        "Frequent transit", "Road pricing", "Cycling lanes"]
    assert spans["t9"]["candidates"][0]["drop"] == "reply_format"  # duplicate-paragraph reply: rejected
    retry = [json.loads(line) for line in (tmp_path / "spans.jsonl.span_retry.jsonl").read_text().splitlines()]
    assert "t9" in {q["id"] for q in retry} and "t4" not in {q["id"] for q in retry}
    # The teacher's shapes come out as heads: bold titles, numbered bold leads, labels, headings.
    rules = outputs["rules"]
    assert [b.title for b in parse(rules["t2"]["markup"]).groups[0].branches][:2] == ["1. **Memory**:",
                                                                                       "2. **Processor**:"]
    assert all(is_head(b.title) for b in parse(rules["t1"]["markup"]).groups[0].branches)
    assert not rules["t5"]["parallel"] and not rules["t6"]["parallel"]  # too short; sequential steps


def render_back(doc: Any) -> str:
    """The markup of doc after a round trip through the model token format."""
    from aspd.markup import render
    from aspd.token_text import from_token_text

    return render(from_token_text(to_token_text(doc)))


# ---------------------------------------------------------------------------------------------- properties

_para = st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta", "**Bold**", "Label:", "- x", "1.", "`c`",
                                  "<b>", "&", "the", "of"]), min_size=1, max_size=9).map(" ".join)


@st.composite
def _answer_and_reply(draw: st.DrawFn) -> tuple[str, str]:
    blocks = []
    for _ in range(draw(st.integers(2, 7))):
        kind = draw(st.sampled_from(["prose", "prose", "item", "heading", "code"]))
        text = draw(_para)
        blocks.append({"prose": text, "item": f"- {text}", "heading": f"## {text}\n{draw(_para)}",
                       "code": f"```\n{text}\n```"}[kind])
    answer = draw(st.sampled_from(["\n\n", "\n"])).join(blocks)
    n = len(split_units(answer))
    groups, at = [], 1
    while at < n and draw(st.booleans()):
        sizes = draw(st.lists(st.integers(1, 2), min_size=2, max_size=3))
        branches = []
        for k, size in enumerate(sizes):
            paras = list(range(at, at + size))
            branches.append({"paragraphs": paras, "title": draw(st.sampled_from(["Alpha side", "Beta view", "x"]))
                             + f" {k}"})
            at += size
        groups.append(branches)
        at += draw(st.integers(0, 2))
    return answer, json.dumps({"groups": groups})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_answer_and_reply())
def test_any_span_reply_gives_valid_markup_or_reasons(case: tuple[str, str]) -> None:
    answer, raw = case
    units = split_units(answer)
    r = parse_span_reply(raw, answer, units)
    assert r.ok or (r.problems and not r.runs)
    if r.ok and r.runs:
        try:
            markup = markup_for(answer, r.runs)
        except MarkupError:
            return  # the answer holds markup tags of its own
        doc = parse(markup)
        assert same_text(flatten(doc), answer)
        for g in doc.groups:
            assert marker_problems(g) == [] and len(g.branches) >= 2
        code = [answer[u.start : u.end] for u in units if u.code]
        for g in doc.groups:
            assert not any(c in b.visible for c in code for b in g.branches)  # code never inside a group
