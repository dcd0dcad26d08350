"""`aspd pasta convert | annotate | filter` through the real CLI entry point."""

import json

import pytest
from jsonlutil import write_jsonl

from aspd.cli import main as cli_main
from aspd.markup import flatten
from aspd.markup import parse as parse_aspd
from aspd.pasta.markup import parse, promises, strip

ASPD = ("Here are two tips:\n<branchgroup>\n<branch title=\"Diet\">Diet: eat a balanced diet.</branch>\n"
        "<branch title=\"Sleep\">Sleep: rest well every night.</branch>\n</branchgroup>\nIn summary, habits.")
LIST = "Tips:\n1. Diet: Eat a balanced diet.\n2. Sleep: Sleep well.\n\nIn summary, habits matter."
PLAIN = "Paris is the capital of France."


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_convert_keeps_record_shape_and_text(tmp_path, capsys):
    rows = [
        {"id": "a", "question": "Tips?", "answer": ASPD, "extra": 1},
        {"id": "m", "question": "Tips?", "answer": "plain", "markup": ASPD},
        {"id": "c", "messages": [{"role": "user", "content": "Tips?"}, {"role": "assistant", "content": ASPD}]},
        {"id": "p", "question": "Capital?", "answer": PLAIN},
    ]
    out = tmp_path / "out.jsonl"
    assert cli_main(["pasta", "convert", "--data", write_jsonl(tmp_path / "in.jsonl", rows), "--out", str(out)]) == 0
    got = read(out)
    assert [sorted(r) for r in got] == [sorted(r) for r in rows]
    texts = [got[0]["answer"], got[1]["markup"], got[2]["messages"][-1]["content"]]
    for t in texts:
        assert promises(parse(t)) == 2 and strip(parse(t)) == flatten(parse_aspd(ASPD))
    assert got[1]["answer"] == "plain" and got[0]["extra"] == 1
    assert got[3]["answer"] == PLAIN  # nothing to convert
    assert "4 line(s), 3 with async spans" in capsys.readouterr().err


def test_annotate_keeps_or_drops_lines_without_lists(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [{"question": "Tips?", "answer": LIST},
                                         {"question": "Capital?", "answer": PLAIN}])
    out = tmp_path / "all.jsonl"
    assert cli_main(["pasta", "annotate", "--data", data, "--out", str(out)]) == 0
    got = read(out)
    assert got[0]["answer"] == ("Tips:\n<scope>1. Diet:<promise/><async> Eat a balanced diet.</async>\n"
                                "2. Sleep:<promise/><async> Sleep well.</async></scope>\n\nIn summary, habits matter.")
    assert got[1]["answer"] == PLAIN
    only = tmp_path / "par.jsonl"
    assert cli_main(["pasta", "annotate", "--data", data, "--out", str(only), "--only-parallel"]) == 0
    assert [r["question"] for r in read(only)] == ["Tips?"]


@pytest.mark.parametrize("bad, message", [
    ("{not json", "bad.jsonl:2: not valid JSON"),
    (json.dumps({"question": "q", "answer": "<scope>a<promise/>b</scope>"}), "bad.jsonl:2: 1:9: <promise/>"),
    (json.dumps({"question": "q"}), "bad.jsonl:2: needs a non-empty 'answer'"),
    (json.dumps(["a list"]), "bad.jsonl:2: line is not a JSON object"),
])
@pytest.mark.parametrize("action", ["convert", "annotate"])
def test_bad_line_names_file_and_line_and_writes_nothing(tmp_path, capsys, bad, message, action):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": ASPD}, bad])
    out = tmp_path / "out.jsonl"
    out.write_text("previous content\n")
    assert cli_main(["pasta", action, "--data", data, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert out.read_text() == "previous content\n"  # untouched, no half-written file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "out.jsonl"]  # no temp file left


def test_filter_keeps_annotations_worth_it(tiny_folder, tmp_path, capsys):
    long = ("Here:<scope>\n1. Diet:<promise/><async> Eat a balanced diet, the quick brown fox.</async>\n"
            "2. Sleep:<promise/><async> Sleep well. The quick brown fox jumps over the lazy dog.</async>\n</scope>")
    rows = [{"id": "long", "question": "Tips?", "answer": long},
            {"id": "plain", "question": "Capital?", "answer": PLAIN}]
    data, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "kept.jsonl"
    code = cli_main(["pasta", "filter", "--model", str(tiny_folder), "--data", data, "--out", str(out),
                     "--max-changed", "1", "--min-gain", "0.2"])
    assert code == 0
    assert out.read_text() == json.dumps(rows[0]) + "\n"  # accepted records as they came
    assert "accepted 1 of 2 line(s)" in capsys.readouterr().err
    # A strict change limit rejects everything; a bad line stops before the model loads.
    assert cli_main(["pasta", "filter", "--model", str(tiny_folder), "--data", data, "--out", str(out),
                     "--max-changed", "0"]) == 0
    assert out.read_text() == ""
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{oops"])
    assert cli_main(["pasta", "filter", "--model", "no-such-model", "--data", bad, "--out", str(out)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
