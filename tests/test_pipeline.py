"""Transform pipeline, offline: reply parsing, deterministic checks, votes, reverting, selection, the
runner's input/resume/summary handling and the conversion to training files, all with RECORDED replies."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonlutil import write_jsonl

from aspd.markup import Branch, Document, Group, Serial, flatten, parse, render
from aspd.pipeline.parsing import parse_rewrite, parse_verdict, to_candidate
from aspd.pipeline.prompts import DEFAULT_PROMPTS, PromptError, fill, load_prompts, rewrite_messages
from aspd.pipeline.runner import (
    InputError,
    RunConfig,
    read_output,
    read_samples,
    sample_from_record,
    transform,
)
from aspd.pipeline.stages import (
    StageConfig,
    check_candidate,
    majority,
    process_sample,
    revert_groups,
    select,
    text_before,
)
from aspd.pipeline.types import Candidate, Sample, Vote

ANSWER = """Here are three ways to save energy at home.
- Turn off lights when you leave a room.
- Wash clothes in cold water.
- Seal drafts around windows and doors.
These small habits add up over a year."""

MARKED = """Here are three ways to save energy at home.
<branchgroup>
<branch title="- Turn off lights"> when you leave a room.</branch>
<branch title="- Wash clothes"> in cold water.</branch>
<branch title="- Seal drafts"> around windows and doors.</branch>
</branchgroup>
These small habits add up over a year."""

GOOD = f"PARALLEL: yes\n<<<ANSWER\n{MARKED}\nANSWER>>>"

# Recorded rewrite replies, good and bad, as models really send them.
REPLIES = {
    "good": GOOD,
    "fenced_whole": f"```text\n{GOOD}\n```",
    "fenced_block": f"**Parallel:** Yes\n\n<<<answer\n```markdown\n{MARKED}\n```\nanswer>>>\nHope this helps!",
    "chatter": f"Sure! Here is the marked answer.\n\nPARALLEL: yes\n<<<ANSWER\n{MARKED}\nANSWER>>>\n",
    "thinking": f"<think>Should I say PARALLEL: no? The items are separate.</think>\n{GOOD}",
    "no": "PARALLEL: no",
    "no_with_block": f"PARALLEL: no\n<<<ANSWER\n{ANSWER}\nANSWER>>>",
    "maybe": f"PARALLEL: maybe\n<<<ANSWER\n{MARKED}\nANSWER>>>",
    "missing_status": f"<<<ANSWER\n{MARKED}\nANSWER>>>",
    "missing_end": f"PARALLEL: yes\n<<<ANSWER\n{MARKED}\n",
    "missing_block": "PARALLEL: yes\nThe list items are independent.",
    "two_blocks": f"PARALLEL: yes\n<<<ANSWER\n{MARKED}\nANSWER>>>\n<<<ANSWER\n{MARKED}\nANSWER>>>",
    "broken_markup": "PARALLEL: yes\n<<<ANSWER\n" + MARKED.replace("cold water.</branch>", "cold water.")
    + "\nANSWER>>>",
    "duplicate_titles": GOOD.replace('title="- Seal drafts"', 'title="- Turn off lights"'),
    # The marker inside the body under a hidden label: branches decoded in parallel would each guess it.
    "label_with_marker": GOOD.replace('title="- Turn off lights"> when', 'title="Lights">- Turn off lights when'),
    "numbers_skip": GOOD.replace("- Turn off lights", "1. Turn off lights").replace("- Wash clothes", "3. Wash clothes")
    .replace("- Seal drafts", "4. Seal drafts"),
    "one_branch": "PARALLEL: yes\n<<<ANSWER\nHere are three ways to save energy at home.\n<branchgroup>\n"
    '<branch title="All">- Turn off lights when you leave a room.\n- Wash clothes in cold water.\n'
    "- Seal drafts around windows and doors.</branch>\n</branchgroup>\nThese small habits add up over a year."
    "\nANSWER>>>",
    "changed_content": GOOD.replace("> in cold water.", "> and always run the dishwasher full and skip the dryer "
                                    "on sunny days."),
    "no_groups": f"PARALLEL: yes\n<<<ANSWER\n{ANSWER}\nANSWER>>>",
}


def sample(answer: str = ANSWER, sid: str = "s1") -> Sample:
    rec = {"id": sid, "question": "How can I save energy at home?", "answer": answer}
    return sample_from_record(rec, 1)


# ------------------------------------------------------------------------------------------------ parsing


def test_parse_rewrite_good_and_tolerated_noise() -> None:
    for key in ("good", "fenced_whole", "fenced_block", "chatter", "thinking"):
        r = parse_rewrite(REPLIES[key], ANSWER)
        assert r.problems == [], key
        assert r.has_parallel is True and r.markup == MARKED, key


def test_parse_rewrite_keeps_a_fence_that_belongs_to_the_answer() -> None:
    code = "```python\nprint(1)\n```"
    r = parse_rewrite(f"PARALLEL: no\n<<<ANSWER\n{code}\nANSWER>>>", code)
    assert r.markup == code


@pytest.mark.parametrize(("key", "has_parallel", "problem"), [
    ("no", False, None),
    ("maybe", None, "must be yes or no"),
    ("missing_status", None, "no 'PARALLEL"),
    ("missing_end", True, "not closed"),
    ("missing_block", True, "no '<<<ANSWER"),
    ("two_blocks", True, "markers (expected one)"),
])
def test_parse_rewrite_reports_problems(key: str, has_parallel: bool | None, problem: str | None) -> None:
    r = parse_rewrite(REPLIES[key], ANSWER)
    assert r.has_parallel is has_parallel
    if problem is None:
        assert r.problems == []
    else:
        assert any(problem in p for p in r.problems), r.problems


@pytest.mark.parametrize(("raw", "verdict"), [
    ("VERDICT: true\nREASON: the items do not refer to each other", True),
    ("**Verdict:** False\nReason: step 2 uses the result of step 1.", False),
    ("```\nVERDICT: TRUE\nREASON: fine\n```", True),
    ("  verdict = yes  \n reason: ok", True),
    ("VERDICT: maybe\nREASON: hard to say", None),
    ("I think these are independent.", None),
    ("VERDICT: true\nVERDICT: false\nREASON: ?", None),
    ("", None),
    ("<think>VERDICT: false? no...</think>\nVERDICT: true\nREASON: fine", True),
])
def test_parse_verdict(raw: str, verdict: bool | None) -> None:
    v = parse_verdict(raw)
    assert v.verdict is verdict
    assert v.raw == raw
    if verdict is None:
        assert v.reason.startswith("unparseable")


def test_parse_verdict_keeps_the_reason() -> None:
    assert parse_verdict("VERDICT: false\nREASON: branch 2 cites branch 1").reason == "branch 2 cites branch 1"
    assert parse_verdict("VERDICT: true").reason == "(no reason given)"


# ------------------------------------------------------------------------------------- deterministic checks


@pytest.mark.parametrize(("key", "drop", "failed"), [
    ("good", None, None),
    ("fenced_block", None, None),
    ("no", "no_parallel", "reply"),
    ("no_with_block", "no_parallel", "reply"),
    ("maybe", "reply_format", "reply"),
    ("missing_status", "reply_format", "reply"),
    ("missing_end", "reply_format", "reply"),
    ("broken_markup", "markup", "parse"),
    ("duplicate_titles", "markup", "parse"),
    ("one_branch", "markup", "parse"),
    ("changed_content", "content", "content"),
    ("label_with_marker", "markers", "markers"),
    ("numbers_skip", "markers", "markers"),
    ("no_groups", "no_group", "groups"),
])
def test_check_candidate(key: str, drop: str | None, failed: str | None) -> None:
    c = to_candidate(REPLIES[key], "recorded", ANSWER)
    r = check_candidate(c, ANSWER, 0.98)
    assert r.drop == drop, r.reason
    if failed is None:
        assert r.doc is not None and render(r.doc) == MARKED
        assert all(v["ok"] for v in r.checks.values())
        assert list(r.checks) == ["reply", "parse", "groups", "branches", "titles", "markers", "content"]
    else:
        assert r.doc is None and r.checks[failed]["ok"] is False and r.reason.startswith(failed)
    if key == "duplicate_titles":
        assert "duplicate title '- Turn off lights'" in (r.parse_error or "")
    if key == "label_with_marker":
        assert r.reason == "markers: group 1: branch 1 ('Lights') starts with the list marker '-'"
    if key == "numbers_skip":
        assert r.reason == "markers: group 1: numbered heads are not consecutive: [1, 3, 4]"


def test_similarity_threshold_is_configurable() -> None:
    small = GOOD.replace("over a year.", "over a whole year.")  # one word added out of ~35
    c = to_candidate(small, "recorded", ANSWER)
    loose, strict = check_candidate(c, ANSWER, 0.9), check_candidate(c, ANSWER, 1.0)
    assert loose.doc is not None and 0.9 <= (loose.similarity or 0) < 1.0
    assert strict.drop == "content"


def test_whitespace_differences_pass() -> None:
    c = to_candidate(GOOD.replace("Here are three", "Here  are\nthree"), "recorded", ANSWER)
    r = check_candidate(c, ANSWER, 1.0)
    assert r.doc is not None and r.similarity == 1.0


# ------------------------------------------------------------------------------- votes, reverting, selection


def test_majority() -> None:
    t, f, n = Vote(True, ""), Vote(False, ""), Vote(None, "unparseable")
    assert majority([t, t, f]) and majority([t]) and majority([t, t, n])
    assert not majority([t, f, n]) and not majority([t, n]) and not majority([]) and not majority([n, n, n])


TWO_GROUPS = Document((
    Serial("Intro."),
    Group((Branch("A", "alpha one"), Branch("B", "beta two"))),
    Serial("Middle."),
    Group((Branch("C", "gamma"), Branch("D", ""), Branch("E", "epsilon"))),
    Serial("End."),
))


def test_revert_groups_inlines_branches_in_order() -> None:
    d = revert_groups(TWO_GROUPS, [True, False])
    assert d.groups == [TWO_GROUPS.groups[0]]
    assert d.segments[-1] == Serial("Middle.\ngamma\nepsilon\nEnd.")
    assert flatten(d) == flatten(TWO_GROUPS)
    assert parse(render(d)) == d
    assert revert_groups(TWO_GROUPS, [False, False]) == Document((Serial(flatten(TWO_GROUPS)),))
    with pytest.raises(ValueError):
        revert_groups(TWO_GROUPS, [True])


def test_text_before() -> None:
    assert text_before(TWO_GROUPS, 0) == "Intro."
    assert text_before(TWO_GROUPS, 1) == "Intro.\nalpha one\nbeta two\nMiddle."


_text = st.text(alphabet="ab \n.", min_size=1, max_size=8)
_group = st.lists(_text, min_size=2, max_size=4).map(
    lambda bodies: Group(tuple(Branch(f"T{i}", b) for i, b in enumerate(bodies))))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(_text.map(Serial), _group), max_size=6), st.data())
def test_revert_groups_keeps_flattened_text(segments: list[Any], data: st.DataObject) -> None:
    doc = Document(tuple(segments)).normalized()
    keep = data.draw(st.lists(st.booleans(), min_size=len(doc.groups), max_size=len(doc.groups)))
    out = revert_groups(doc, keep)
    assert flatten(out) == flatten(doc)
    assert len(out.groups) == sum(keep)


def test_select_prefers_dp_then_abn() -> None:
    small = parse("Intro words here.\n<branchgroup>\n<branch title=\"a\">x</branch>\n<branch title=\"b\">y"
                  "</branch>\n</branchgroup>")
    big = parse("<branchgroup>\n<branch title=\"a\">x x</branch>\n<branch title=\"b\">y y</branch>\n</branchgroup>")
    wide = parse("<branchgroup>\n<branch title=\"a\">x x</branch>\n<branch title=\"b\">y y</branch>\n"
                 "<branch title=\"c\">z z</branch>\n</branchgroup>")
    assert select([small, big]) == 1
    assert select([None, None]) is None
    # big and wide have the same DP (titles count as serial words); wide has more branches per group.
    assert select([big, wide]) == 1 and select([wide, big]) == 0
    assert select([big, big]) == 0  # ties: the first one


# ---------------------------------------------------------------------------------------- one sample, e2e


class Recorded:
    """A Rewriter that replays recorded replies."""

    def __init__(self, *replies: str, name: str = "recorded"):
        self.replies, self.name = list(replies), name
        self.calls = 0

    async def rewrite(self, sample: Sample, n: int) -> list[Candidate]:
        self.calls += 1
        return [to_candidate(r, self.name, sample.answer) for r in self.replies[:n]]


class Scripted:
    """A Judge answering from recorded replies: independence per group (by its first title), the rest fixed.
    A kind set to None raises NotImplementedError, as a judge that cannot do it must."""

    def __init__(self, independence: dict[str, list[str]] | None = None, default: list[str] | None = None,
                 integrity: list[str] | None = None, answer: list[str] | None = None, name: str = "scripted"):
        self.ind, self.default = independence or {}, default or ["VERDICT: true\nREASON: ok"]
        self.integ, self.ans = integrity, answer
        self.name = name
        self.seen: list[tuple[str, str]] = []

    async def independence(self, sample: Sample, before: str, group: Group, k: int) -> list[Vote]:
        self.seen.append(("independence", before))
        raws = self.ind.get(group.titles[0], self.default)
        return [parse_verdict(raws[i % len(raws)]) for i in range(k)]

    async def integrity(self, sample: Sample, candidate: Document, k: int) -> list[Vote]:
        if self.integ is None:
            raise NotImplementedError("scripted judge: no integrity votes")
        return [parse_verdict(self.integ[i % len(self.integ)]) for i in range(k)]

    async def answer(self, sample: Sample, candidate: Document, k: int) -> list[Vote]:
        if self.ans is None:
            raise NotImplementedError("scripted judge: no answer votes")
        return [parse_verdict(self.ans[i % len(self.ans)]) for i in range(k)]


YES, NO, MAYBE = "VERDICT: true\nREASON: independent", "VERDICT: false\nREASON: depends", "VERDICT: maybe"
ALL_YES = Scripted(integrity=[YES], answer=[YES])

TWO_GROUP_ANSWER = """Plan the trip in two parts.
Packing:
- a warm jacket
- sturdy boots
Food:
- sandwiches with cheese
- a flask of tea
Enjoy the hike."""

TWO_GROUP_MARKED = """Plan the trip in two parts.
Packing:
<branchgroup>
<branch title="- a warm"> jacket</branch>
<branch title="- sturdy"> boots</branch>
</branchgroup>
Food:
<branchgroup>
<branch title="- sandwiches"> with cheese</branch>
<branch title="- a flask"> of tea</branch>
</branchgroup>
Enjoy the hike."""


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_process_sample_happy_path_keeps_input_fields() -> None:
    s = sample_from_record({"id": 7, "question": "How can I save energy?", "answer": ANSWER, "extra": [1]}, 1)
    out = run(process_sample(s, Recorded(GOOD, REPLIES["broken_markup"], REPLIES["no"]), ALL_YES, StageConfig()))
    assert out["id"] == 7 and out["extra"] == [1] and out["answer"] == ANSWER
    assert out["parallel"] is True and out["markup"] == MARKED
    c0, c1, c2 = out["candidates"]
    assert c0["verdict"] == "selected" and c0["stage"] == "selection" and c0["dp"] > 0
    assert [v["verdict"] for v in c0["independence"]["groups"][0]["votes"]] == [True] * 3
    assert c0["integrity"]["passed"] and c0["answer"]["passed"]
    assert c1["verdict"] == "dropped" and c1["stage"] == "checks" and c1["parse_error"]
    assert c2["verdict"] == "dropped" and c2["drop"] == "no_parallel"
    st_ = out["stats"]
    assert (st_["candidates"], st_["passed_checks"], st_["passed_independence"], st_["passed_integrity"],
            st_["passed_answer"]) == (3, 1, 1, 1, 1)
    assert st_["drops"] == {"markup": 1, "no_parallel": 1}
    assert st_["failures"] == {"markup_error": 1}
    assert st_["groups"] == 1 and st_["branches"] == 3 and st_["outcome"] == "parallel"


def test_failing_group_is_reverted_and_the_rest_kept() -> None:
    s = sample(TWO_GROUP_ANSWER)
    judge = Scripted({"- a warm": [YES], "- sandwiches": [NO, NO, YES]}, integrity=[YES], answer=[YES])
    out = run(process_sample(s, Recorded(f"PARALLEL: yes\n<<<ANSWER\n{TWO_GROUP_MARKED}\nANSWER>>>"), judge))
    assert out["parallel"] is True
    doc = parse(out["markup"])
    assert [g.titles for g in doc.groups] == [("- a warm", "- sturdy")]
    assert flatten(doc) == TWO_GROUP_ANSWER
    ind = out["candidates"][0]["independence"]
    assert [g["kept"] for g in ind["groups"]] == [True, False] and ind["groups"][1]["yes"] == 1
    # The judge saw the text before each group, the earlier group flattened.
    assert judge.seen[1] == ("independence", "Plan the trip in two parts.\nPacking:\n- a warm jacket\n"
                             "- sturdy boots\nFood:")


def test_unparseable_votes_count_against() -> None:
    out = run(process_sample(sample(), Recorded(GOOD), Scripted({"- Turn off lights": [YES, MAYBE, MAYBE]},
                                                                 integrity=[YES], answer=[YES])))
    assert out["parallel"] is False and out["markup"] == ANSWER
    c = out["candidates"][0]
    assert c["verdict"] == "dropped" and c["stage"] == "independence" and c["drop"] == "independence"
    assert out["stats"]["failures"]["unparseable_reply"] == 2
    assert out["stats"]["outcome"].startswith("serial: no candidate survived")


@pytest.mark.parametrize("kind", ["integrity", "answer"])
def test_integrity_or_answer_failure_drops(kind: str) -> None:
    votes = {"integrity": [YES], "answer": [YES], kind: [NO, YES, NO]}
    out = run(process_sample(sample(), Recorded(GOOD), Scripted(**votes)))
    assert out["parallel"] is False and out["markup"] == ANSWER
    c = out["candidates"][0]
    assert c["stage"] == kind and c[kind]["passed"] is False and c[kind]["yes"] == 1
    if kind == "integrity":
        assert "answer" not in c  # no votes spent after a failure


def test_stage_skipped_when_judge_cannot_vote() -> None:
    out = run(process_sample(sample(), Recorded(GOOD), Scripted()))  # independence only
    assert out["parallel"] is True
    c = out["candidates"][0]
    assert c["integrity"] == {"skipped": "scripted judge: no integrity votes"}
    assert "skipped" in c["answer"]
    assert out["stats"]["skipped_stages"] == ["answer", "integrity"]
    none = run(process_sample(sample(), Recorded(GOOD), None))
    assert none["parallel"] is True and none["stats"]["skipped_stages"] == ["answer", "independence", "integrity"]


def test_selection_among_survivors() -> None:
    fewer = GOOD.replace('<branch title="- Seal drafts"> around windows and doors.</branch>\n', "").replace(
        "</branchgroup>\n", '</branchgroup>\n- Seal drafts around windows and doors.\n')
    out = run(process_sample(sample(), Recorded(fewer, GOOD), ALL_YES))
    assert [c["verdict"] for c in out["candidates"]] == ["passed", "selected"]
    assert out["markup"] == MARKED


def test_rewriter_failure_keeps_sample() -> None:
    class Broken:
        name = "broken"

        async def rewrite(self, sample: Sample, n: int) -> list[Candidate]:
            raise RuntimeError("endpoint exploded")

    out = run(process_sample(sample(), Broken(), ALL_YES))
    assert out["parallel"] is False and out["markup"] == ANSWER and out["candidates"] == []
    assert out["stats"]["failures"] == {"rewriter_error": 1}


def test_judge_exception_counts_as_failed_votes() -> None:
    class Bad(Scripted):
        async def independence(self, sample: Sample, before: str, group: Group, k: int) -> list[Vote]:
            raise RuntimeError("judge down")

    out = run(process_sample(sample(), Recorded(GOOD), Bad(integrity=[YES], answer=[YES])))
    assert out["parallel"] is False and out["stats"]["failures"] == {"judge_error": 1}
    assert "judge error" in out["candidates"][0]["independence"]["groups"][0]["votes"][0]["reason"]


# ------------------------------------------------------------------------------------------ input records


def test_sample_from_record_formats() -> None:
    s = sample_from_record({"prompt": "Rewrite this.", "context": "It are fine.", "answer": "It is fine."}, 3)
    assert s.id == "line-3" and s.messages == [{"role": "user", "content": "Rewrite this.\n\nIt are fine."}]
    s = sample_from_record({"id": "x", "system": "Be brief.", "history": [{"question": "Hi", "answer": "Hello"}],
                            "instruction": "Name a colour.", "answer": "Blue."}, 1)
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant", "user"]
    s = sample_from_record({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}, 1)
    assert s.answer == "A" and s.messages == [{"role": "user", "content": "Q"}]
    for bad in ({"question": "Q"}, {"answer": "A"}, {"question": "Q", "answer": " "}, [1],
                {"messages": [{"role": "user"}], "answer": "A"}, {"id": True, "question": "Q", "answer": "A"},
                {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "X"}], "answer": "A"}):
        with pytest.raises(ValueError):
            sample_from_record(bad, 1)


def test_read_samples_reports_bad_lines(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "question": "Q", "answer": "A"},
        "{not json",
        {"question": "Q", "answer": "A"},  # no id: one made from its line number
        "",
        {"id": "a", "question": "Q2", "answer": "A2"},  # duplicate id
        {"id": "b", "question": "Q"},  # no answer
    ])
    msgs: list[str] = []
    r = read_samples(p, report=msgs.append)
    assert [s.id for s in r.samples] == ["a", "line-3"]
    assert r.bad_lines == 3 and r.duplicates == 1
    assert any(f"{p}:2: not valid JSON" in m for m in msgs)
    assert any(f"{p}:5: duplicate id 'a' (first at line 1)" in m for m in msgs)
    assert any(f"{p}:6: needs a non-empty string 'answer'" in m for m in msgs)
    with pytest.raises(InputError, match=r"in\.jsonl:2:"):
        read_samples(p, strict=True)


# -------------------------------------------------------------------------------------- runner and resume


def inputs(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [{"id": f"s{i}", "question": f"Q{i}", "answer": ANSWER}
                                               for i in range(n)])


def cfg(**kw: Any) -> RunConfig:
    return RunConfig(StageConfig(n=2, k=3), workers=3, progress=False, **kw)


def test_transform_file_summary_adds_up(tmp_path: Path) -> None:
    inp = inputs(tmp_path, 5)
    with open(inp, "a") as f:
        f.write("garbage\n")
    out = tmp_path / "out.jsonl"
    summary = transform(inp, out, Recorded(GOOD, REPLIES["changed_content"]), ALL_YES, cfg(), report=lambda _: None)
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["id"] for r in recs) == [f"s{i}" for i in range(5)]
    assert summary == json.loads(Path(f"{out}.summary.json").read_text())
    assert summary["samples"] == 5 and summary["parallel_samples"] == 5 and summary["serial_samples"] == 0
    acc = summary["acceptance"]
    assert acc == {"candidates_in": 10, "passed_checks": 5, "passed_independence": 5, "passed_integrity": 5,
                   "passed_answer": 5}
    assert acc["candidates_in"] == acc["passed_checks"] + sum(v for k, v in summary["drops"].items()
                                                              if k not in ("independence", "integrity", "answer"))
    assert summary["ppd"] == {"before": 0.0, "after": 1.0}
    assert summary["abn"]["after"] == 3.0 and 0 < summary["dp"]["after"] < 1
    assert summary["dp"]["parallel_samples_mean"] == pytest.approx(recs[0]["stats"]["dp"])  # all alike here
    assert summary["checks"]["markers"] == {"ran": 10, "passed": 10}
    assert summary["checks"]["content"] == {"ran": 10, "passed": 5}
    assert summary["by_source"] == {"recorded": {"candidates": 10, "passed_checks": 5, "passed_independence": 5,
                                                 "passed_integrity": 5, "passed_answer": 5, "selected": 5}}
    assert summary["this_run"]["bad_input_lines"] == 1 and summary["this_run"]["processed"] == 5
    with pytest.raises(InputError, match="--resume"):
        transform(inp, out, Recorded(GOOD), ALL_YES, cfg(), report=lambda _: None)


def test_resume_drops_torn_line_and_never_duplicates(tmp_path: Path) -> None:
    inp = inputs(tmp_path, 6)
    out = tmp_path / "out.jsonl"
    transform(inp, out, Recorded(GOOD), ALL_YES, cfg(limit=3), report=lambda _: None)
    text = out.read_text()
    full = text.splitlines()
    # Simulate a kill mid-write: the third line only half there.
    out.write_text("\n".join(full[:2]) + "\n" + full[2][: len(full[2]) // 2])
    msgs: list[str] = []
    rewriter = Recorded(GOOD)
    summary = transform(inp, out, rewriter, ALL_YES, cfg(resume=True), report=msgs.append)
    assert any("partial last line" in m for m in msgs)
    lines = out.read_text().splitlines()
    ids = [json.loads(x)["id"] for x in lines]  # every line valid JSON
    assert sorted(ids) == [f"s{i}" for i in range(6)] and len(set(ids)) == 6
    assert rewriter.calls == 4 and summary["this_run"]["already_done"] == 2
    # Nothing left to do: a second resume writes nothing.
    again = transform(inp, out, Recorded(GOOD), ALL_YES, cfg(resume=True), report=lambda _: None)
    assert again["this_run"]["processed"] == 0 and out.read_text().splitlines() == lines


def test_read_output_rejects_corruption_in_the_middle(tmp_path: Path) -> None:
    out = write_jsonl(tmp_path / "o.jsonl", [{"id": "a"}, "{broken", {"id": "b"}])
    with pytest.raises(InputError, match=r"o\.jsonl:2:"):
        read_output(out)


def test_retry_failed(tmp_path: Path) -> None:
    class Flaky:
        name = "flaky"

        def __init__(self) -> None:
            self.fail = True

        async def rewrite(self, sample: Sample, n: int) -> list[Candidate]:
            if self.fail:
                raise RuntimeError("down")
            return [to_candidate(GOOD, self.name, sample.answer)]

    inp, out = inputs(tmp_path, 3), tmp_path / "out.jsonl"
    flaky = Flaky()
    s1 = transform(inp, out, flaky, ALL_YES, cfg(), report=lambda _: None)
    assert s1["parallel_samples"] == 0 and s1["samples"] == 3 and s1["failures"] == {"rewriter_error": 3}
    flaky.fail = False
    s2 = transform(inp, out, flaky, ALL_YES, cfg(resume=True, retry_failed=True), report=lambda _: None)
    assert s2["this_run"]["retried"] == 3 and s2["parallel_samples"] == 3 and s2["samples"] == 3
    assert len(out.read_text().splitlines()) == 3


# ----------------------------------------------------------------------------------- conversion, prompts


def test_convert_to_training_files(tmp_path: Path) -> None:
    from aspd.pipeline.convert import convert
    from aspd.train.data import read_records

    inp = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "p", "prompt": "Save energy?", "context": "At home.", "answer": ANSWER},
        {"id": "q", "question": "Say hi", "answer": "Hi there."},
    ])
    out = tmp_path / "out.jsonl"
    transform(inp, out, Recorded(GOOD), ALL_YES, cfg(), report=lambda _: None)
    a, s = tmp_path / "a.jsonl", tmp_path / "s.jsonl"
    counts = convert(out, a, s, report=lambda _: None)
    assert counts == {"records": 2, "written": 2, "parallel": 1, "skipped": 0, "flattened": 0}
    ra = {r.id: r for r in read_records(a)}
    rs = {r.id: r for r in read_records(s)}
    assert ra["p"].answer.groups and not rs["p"].answer.groups
    assert flatten(ra["p"].answer) == flatten(rs["p"].answer) == ANSWER
    assert ra["p"].messages == [{"role": "user", "content": "Save energy?\n\nAt home."}]
    assert flatten(ra["q"].answer) == "Hi there."
    assert convert(out, a, None, parallel_only=True, report=lambda _: None)["written"] == 1


def test_convert_caps_serial_share(tmp_path: Path) -> None:
    from aspd.pipeline.convert import convert
    from aspd.pipeline.runner import InputError

    par = "Intro.\n<branchgroup><branch title=\"A\">a</branch><branch title=\"B\">b</branch></branchgroup>"
    recs = [{"id": f"s{i}", "question": "Q", "answer": f"plain {i}", "markup": f"plain {i}", "parallel": False}
            for i in range(9)]
    recs[2:2] = [{"id": f"p{i}", "question": "Q", "answer": "Intro.\nab", "markup": par, "parallel": True}
                 for i in range(3)]
    out = write_jsonl(tmp_path / "out.jsonl", recs)
    a = tmp_path / "a.jsonl"
    counts = convert(out, a, None, serial_share=0.5, report=lambda _: None)
    ids = [json.loads(line)["id"] for line in a.read_text().splitlines()]
    assert counts["written"] == 6 and sum(i.startswith("p") for i in ids) == 3
    assert ids == sorted(ids, key=[r["id"] for r in recs].index)  # input order kept
    assert [i for i in ids if i.startswith("s")] == ["s0", "s3", "s6"]  # spread over the file, not the head
    assert convert(out, a, None, serial_share=0.0, report=lambda _: None)["written"] == 3
    with pytest.raises(InputError):
        convert(out, a, None, serial_share=1.0, report=lambda _: None)


def test_convert_flattens_layouts_that_save_little(tmp_path: Path) -> None:
    from aspd.pipeline.convert import convert, layout_speedup
    from aspd.pipeline.runner import InputError

    even = "Intro.\n<branchgroup><branch title=\"A\">a b c d</branch><branch title=\"B\">e f g h</branch></branchgroup>"
    lopsided = ("Intro.\n<branchgroup><branch title=\"A\">a</branch>"
                "<branch title=\"B\">b c d e f g h i j</branch></branchgroup>")
    assert layout_speedup(parse(even)) == 9 / 5
    assert layout_speedup(parse(lopsided)) == 11 / 10
    assert layout_speedup(parse("No group here.")) == 1.0
    recs = [{"id": i, "question": "Q", "answer": "x", "markup": m, "parallel": True}
            for i, m in (("even", even), ("lopsided", lopsided))]
    out = write_jsonl(tmp_path / "out.jsonl", recs)
    a, s = tmp_path / "a.jsonl", tmp_path / "s.jsonl"
    counts = convert(out, a, s, min_layout_speedup=1.5, report=lambda _: None)
    assert counts["parallel"] == 1 and counts["flattened"] == 1 and counts["written"] == 2
    rows = {r["id"]: r["answer"] for r in map(json.loads, a.read_text().splitlines())}
    assert "<branchgroup>" in rows["even"] and rows["lopsided"] == flatten(parse(lopsided))
    assert a.read_text().count("lopsided") == s.read_text().count("lopsided") == 1  # same samples in both files
    assert convert(out, a, None, parallel_only=True, min_layout_speedup=1.5, report=lambda _: None)["written"] == 1
    with pytest.raises(InputError):
        convert(out, a, None, min_layout_speedup=0.5, report=lambda _: None)


def test_fill_is_one_pass_and_brace_safe() -> None:
    text = fill("A {{answer}} B {{question}} {{other}}", answer="{{question}} {x}", question="Q")
    assert text == "A {{question}} {x} B Q {{other}}"
    msgs = rewrite_messages(DEFAULT_PROMPTS, [{"role": "user", "content": "Q?"}], "ans {{answer}}")
    assert msgs[0]["content"] == DEFAULT_PROMPTS.rewrite_system and "ans {{answer}}" in msgs[1]["content"]


def test_load_prompts(tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"rewrite_user": "Mark this: {{answer}}"}))
    pr = load_prompts(p)
    assert pr.rewrite_user == "Mark this: {{answer}}" and pr.rewrite_system == DEFAULT_PROMPTS.rewrite_system
    for bad, msg in (({"rewrite_user": "no placeholder"}, "lacks"), ({"nope": "x"}, "unknown prompt keys"),
                     ({"answer_user": "{{original}} {{candidate}} {{weird}}"}, "unknown placeholder"),
                     ([1], "JSON object")):
        p.write_text(json.dumps(bad))
        with pytest.raises(PromptError, match=msg):
            load_prompts(p)


def test_default_prompts_describe_the_protocol() -> None:
    assert "PARALLEL: yes" in DEFAULT_PROMPTS.rewrite_system and "<<<ANSWER" in DEFAULT_PROMPTS.rewrite_system
    for kind in ("independence", "integrity", "answer"):
        assert "VERDICT: true" in getattr(DEFAULT_PROMPTS, f"{kind}_system")
    # The example inside the rewrite prompt is itself a valid reply for its own answer.
    example = DEFAULT_PROMPTS.rewrite_system.split("Reply:\n", 1)[1]
    reply = parse_rewrite(example)
    assert reply.problems == [] and reply.markup is not None and parse(reply.markup).groups


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aspd.cli import main

    inp = inputs(tmp_path, 1)
    assert main(["transform", "--input", str(inp)]) == 2
    assert "give --input and --output" in capsys.readouterr().err
    assert main(["transform", "--input", str(inp), "--output", str(tmp_path / "o.jsonl"), "--model", "m"]) == 2
    assert "--base-url" in capsys.readouterr().err
    assert main(["transform", "--input", str(inp), "--output", str(tmp_path / "o.jsonl"), "--rewriter", "local"]) == 2
    assert "--local-model" in capsys.readouterr().err
    assert main(["transform", "--to-train", str(tmp_path / "missing.jsonl"), "--aspd", str(tmp_path / "a")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["transform", "--dump-prompts"]) == 0
    assert json.loads(capsys.readouterr().out) == DEFAULT_PROMPTS.to_dict()


def test_local_backend_with_tiny_model() -> None:
    """The local backend end to end on a tiny random model: replies are noise, so the sample stays serial."""
    from aspd.pipeline.backends.local import LocalBackend
    from aspd.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    short = {"rewrite_system": "Mark parallel parts.", "rewrite_user": "{{answer}}",
             "independence_system": "Independent?", "independence_user": "{{branches}}"}
    from dataclasses import replace

    be = LocalBackend("tiny", model=tiny_model("llama", len(tok)), tokenizer=tok, max_new_tokens=8,
                      judge_max_new_tokens=4, prompts=replace(DEFAULT_PROMPTS, **short), batch_size=2)
    s = sample("Tips: eat well. Sleep well.")
    out = run(process_sample(s, be, be, StageConfig(n=3, k=3)))
    assert len(out["candidates"]) == 3 and out["markup"] == s.answer and out["parallel"] is False
    assert out["stats"]["llm_calls"] == 3 and out["stats"]["completion_tokens"] > 0
    votes = run(be.independence(s, "", Group((Branch("a", "x"), Branch("b", "y"))), 3))
    assert len(votes) == 3 and all(v.verdict is None for v in votes)


def test_cli_with_rule_rewriter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--rewriter rules` through the CLI."""
    from aspd.cli import main

    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "question": "Save energy?", "answer": ANSWER},
                                              {"id": "b", "question": "Hi", "answer": "Hello."}])
    out = tmp_path / "out.jsonl"
    assert main(["transform", "--input", str(inp), "--output", str(out), "--rewriter", "rules",
                 "--no-progress", "--min-words", "0"]) == 0
    recs = {r["id"]: r for r in read_output(out)}
    assert recs["b"]["parallel"] is False and recs["b"]["markup"] == "Hello."
    assert flatten(parse(recs["a"]["markup"])) == ANSWER
    assert recs["a"]["parallel"] is True  # a plain list: the rules find it; no judge, so no votes
    assert recs["a"]["stats"]["skipped_stages"] == ["answer", "independence", "integrity"]
    assert "samples: 2" in capsys.readouterr().out


def test_likelihood_judge_gets_the_command_line_options() -> None:
    from aspd.cli import build_parser
    from aspd.pipeline.cli import build_backends
    from aspd.pipeline.likelihood import DEFAULT_MAX_CHANGED, DEFAULT_MAX_NLL_INCREASE

    def judge(*extra: str) -> Any:
        argv = ["transform", "--input", "in.jsonl", "--output", "out.jsonl", "--rewriter", "rules",
                "--judge", "likelihood", "--target-model", "some-model", "--device", "cpu", *extra]
        return build_backends(build_parser("transform").parse_args(argv), DEFAULT_PROMPTS)[1]

    given = judge("--likelihood-threshold", "0.2", "--likelihood-max-nll-increase", "0.3", "--dtype", "float32")
    assert (given.max_changed, given.max_nll_increase, given._device, given._dtype) == (0.2, 0.3, "cpu", "float32")
    default = judge()
    assert (default.max_changed, default.max_nll_increase) == (DEFAULT_MAX_CHANGED, DEFAULT_MAX_NLL_INCREASE)


def test_read_output_keeps_a_whole_last_record_without_newline(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    out.write_text('{"id": "a"}\n{"id": "b"}')
    assert [r["id"] for r in read_output(out, repair=True)] == ["a", "b"]
    assert out.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    out.write_text('{"id": "a"}\n{"id": "b", "mark')
    msgs: list[str] = []
    assert [r["id"] for r in read_output(out, repair=False, report=msgs.append)] == ["a"]
    assert out.read_text().endswith('"mark') and msgs  # not repaired without asking
    assert [r["id"] for r in read_output(out, repair=True, report=msgs.append)] == ["a"]
    assert out.read_text() == '{"id": "a"}\n'


def test_judge_raising_before_any_await_is_handled() -> None:
    class Sync(Scripted):
        def integrity(self, sample: Sample, candidate: Document, k: int) -> Any:  # not async: raises at call
            raise NotImplementedError("sync judge: no integrity")

    out = run(process_sample(sample(), Recorded(GOOD), Sync(answer=[YES])))
    assert out["parallel"] is True and out["candidates"][0]["integrity"] == {"skipped": "sync judge: no integrity"}
