"""The input record models: what each accepts, and the one-line message for what it does not."""

import pytest

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
