"""The record models (`aspd.records`): what each accepts, and the one-line `file:line` message for what it does not."""

import pytest
from jsonlutil import write_jsonl

from aspd.records import RecordError, question_turns
from aspd.sample import record_messages

GROUP = '<branchgroup>\n<branch title="A">a.</branch>\n<branch title="B">b.</branch>\n</branchgroup>'


def test_chat_records_of_both_shapes() -> None:
    msgs = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    assert record_messages({"id": 1, "messages": msgs}) == (msgs[:1], "A.")
    assert record_messages({"instruction": "Sum:", "input": "1 2", "system": "Be brief.",
                            "history": [{"question": "Hi", "answer": f"Tips:\n{GROUP}"}]}) == ([
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Tips:\na.\nb."},  # an earlier marked answer re-enters flattened
        {"role": "user", "content": "Sum:\n\n1 2"}], None)
    assert record_messages({"prompt": "Q?", "context": "", "input": "", "history": None})[0] == [
        {"role": "user", "content": "Q?"}]


@pytest.mark.parametrize("record, message", [
    (["a list"], "line is not a JSON object"),
    ({"messages": [{"role": "user", "content": 3}]}, "'messages' must be a list of {role, content} objects"),
    ({"messages": [{"role": "assistant", "content": "A."}]}, "'messages' must end with the question"),
    ({"instruction": "  "}, "needs 'messages' or a non-empty 'question' (or 'prompt' / 'instruction')"),
    ({"prompt": 5}, "needs 'messages' or a non-empty 'question'"),
    ({"question": "Q?", "context": ["x"]}, "'context' must be a string"),
    ({"question": "Q?", "history": [{"question": "q"}]}, "'history' must be a list of {question, answer} objects"),
])
def test_chat_record_problems_are_one_line(record, message) -> None:
    with pytest.raises(RecordError) as info:
        record_messages(record)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_bench_question_turns() -> None:
    assert question_turns({"turns": ["a", "b"], "category": "x"}) == ("a", "b")
    assert question_turns({"prompt": "Q?"}) == ("Q?",)
    for record, message in [({"turns": []}, "'turns' must be a non-empty list of strings"),
                            ({"turns": ["a", " "]}, "every item of 'turns' must be a non-empty string"),
                            ({"id": 1}, "needs 'turns' (a list of user messages) or a 'question' string")]:
        with pytest.raises(RecordError, match=message.replace("(", r"\(").replace(")", r"\)")):
            question_turns(record)


# ------------------------------------------------------------------------ records aspd writes and reads back

GOOD_OUTPUT = {"id": "g", "messages": [{"role": "user", "content": "Q?"}], "answer": "A.", "markup": "A.",
               "parallel": False, "candidates": [], "stats": {"candidates": 0, "failures": {}}}


def one_line_error(err: str) -> str:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("record, problem", [
    ({"parallel": True}, "missing 'id'"),
    ({"id": None}, "'id' must be a non-empty string or an integer, got null"),
    ({"id": "a", "parallel": "yes"}, """'parallel': input should be a valid boolean, got "yes\""""),
    ({"id": "a", "stats": {"candidates": "3"}}, """'stats.candidates': input should be a valid integer, got "3\""""),
    ({"id": "a", "stats": []}, "'stats': input should be a valid dictionary, got []"),
    ({"id": "a", "candidates": [{"reached": "checks"}]}, "'candidates.0.reached': input should be a valid list"),
    (["a list"], "line is not a JSON object"),
])
def test_transform_output_problems_name_file_line_and_field(tmp_path, capsys, record, problem) -> None:
    from aspd.cli import main
    from aspd.pipeline.runner import InputError, read_output

    out = write_jsonl(tmp_path / "out.jsonl", [GOOD_OUTPUT, record, {**GOOD_OUTPUT, "id": "h"}])
    message = f"{out}:2: not a valid output line ({problem}"
    assert main(["transform", "--to-train", out, "--aspd", str(tmp_path / "a.jsonl")]) == 2  # conversion
    assert message in one_line_error(capsys.readouterr().err)
    with pytest.raises(InputError) as info:  # what --resume and the summary read
        read_output(out, repair=True)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert [r["id"] for r in read_output(write_jsonl(tmp_path / "ok.jsonl", [GOOD_OUTPUT]))] == ["g"]


@pytest.mark.parametrize("record, problem", [
    ({"answer": "A.", "finish": "stop"}, "missing 'id'"),
    ({"id": None, "answer": "A."}, "'id' must be a non-empty string or an integer, got null"),
    ({"id": "a"}, "missing 'answer'"),
    ({"id": "a", "answer": 3}, "'answer': input should be a valid string, got 3"),
    ({"id": "a", "answer": "A.", "finish": None}, "'finish': input should be a valid string, got null"),
])
def test_distill_answer_problems_name_file_line_and_field(tmp_path, capsys, record, problem) -> None:
    from aspd.cli import main

    good = {"id": "p0", "category": "math", "prompt": "Q?", "answer": "What is 2 + 2, and why?", "finish": "stop"}
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "p0", "prompt": "Q?"}, {"id": "p1", "prompt": "R?"}])
    out = write_jsonl(tmp_path / "out.jsonl", [good, {**record, "category": "math"}])
    # --resume reads the answers before it loads a model
    assert main(["distill", "--model", "unused", "--prompts", prompts, "--output", out, "--resume"]) == 2
    assert f"{out}:2: not a distill output line ({problem}" in one_line_error(capsys.readouterr().err)
    assert main(["prompts", "collect", "--input", out, "--output", str(tmp_path / "o.jsonl")]) == 2
    assert f"{out}:2: {problem}" in one_line_error(capsys.readouterr().err)


def test_conversion_skips_name_the_file_line(tmp_path, capsys) -> None:
    from aspd.cli import main

    out = write_jsonl(tmp_path / "out.jsonl", [GOOD_OUTPUT, "", {**GOOD_OUTPUT, "id": "h", "markup": 5}])
    assert main(["transform", "--to-train", out, "--aspd", str(tmp_path / "a.jsonl")]) == 0
    assert f"skipping {out}:3 (id 'h'): 'markup' must be a non-empty string" in capsys.readouterr().err
