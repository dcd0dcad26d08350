"""Data files (#16): bad bytes, gzip, a BOM, bad and missing ids, empty files, through the real `aspd` entry."""

import gzip
import json

import pytest

from aspd.cli import main
from aspd.jsonl import JsonlError, RecordIds, iter_jsonl, read_appended

ANSWER = "Tips:\n1. Eat well.\n2. Sleep well."


def rows(n: int = 3, **extra) -> list[dict]:
    return [{"id": f"s{i}", "question": f"Q{i}?", "answer": ANSWER, **extra} for i in range(n)]


def encode(items: list) -> bytes:
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in items)


def transform(inp, out, *extra: str) -> int:
    return main(["transform", "--input", str(inp), "--output", str(out), "--rewriter", "rules", "--no-progress",
                 *extra])


def out_ids(path) -> list:
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("aspd: error: ") and "Traceback" not in "".join(err)
    return err[-1]


LATIN1 = b'{"id": "x", "question": "Caf\xe9?", "answer": "Oui."}'  # one Latin-1 byte
MUST = "'id' must be a non-empty string or an integer, got"


# --------------------------------------------------------------------------------------------- transform


def test_transform_latin1_line_is_a_file_line_error_or_skipped(tmp_path, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_bytes(encode([rows(1)[0], LATIN1, rows(2)[1]]))
    assert transform(inp, out, "--strict") == 2
    assert f"{inp}:2: not valid UTF-8 (byte 0xe9" in one_line_error(capsys)
    assert transform(inp, out, "--skip-bad-lines") == 0
    assert f"skipping {inp}:2: not valid UTF-8" in capsys.readouterr().err
    assert out_ids(out) == ["s0", "s1"]


def test_transform_reads_gzip_and_a_bom(tmp_path, capsys):
    gz = tmp_path / "in.jsonl.gz"
    gz.write_bytes(gzip.compress(encode(rows(3))))
    assert transform(gz, tmp_path / "a.jsonl") == 0
    assert out_ids(tmp_path / "a.jsonl") == ["s0", "s1", "s2"]
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + encode(rows(2)))
    assert transform(bom, tmp_path / "b.jsonl", "--strict") == 0
    assert out_ids(tmp_path / "b.jsonl") == ["s0", "s1"]
    assert "skipping" not in capsys.readouterr().err


@pytest.mark.parametrize("bad", [None, "", "  ", True, 1.5, ["a"]])
def test_transform_rejects_bad_ids(tmp_path, capsys, bad):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_bytes(encode([rows(1)[0], {"id": bad, "question": "Q?", "answer": ANSWER}]))
    assert transform(inp, out, "--strict") == 2
    assert f"{inp}:2: {MUST} {json.dumps(bad)}" in one_line_error(capsys)


def test_null_id_is_not_redone_on_every_resume(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_bytes(encode([*rows(2), {"id": None, "question": "Q?", "answer": ANSWER},
                            {"question": "No id?", "answer": ANSWER}]))
    assert transform(inp, out) == 0
    first = out_ids(out)
    assert first == ["s0", "s1", "line-4"]  # the null line skipped as bad, the id-less one given its own id
    for _ in range(2):
        assert transform(inp, out, "--resume") == 0
        assert out_ids(out) == first  # nothing appended again


def test_missing_id_never_collides_with_a_real_one(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_bytes(encode([{"id": 2, "question": "Q?", "answer": ANSWER},  # the old made-up id of line 2
                            {"question": "Q2?", "answer": ANSWER},
                            {"question": "Q3?", "answer": ANSWER},
                            {"id": "line-3", "question": "Q4?", "answer": ANSWER}]))  # the new one of line 3
    assert transform(inp, out, "--strict") == 0
    assert out_ids(out) == [2, "line-2", "line-3.2", "line-3"]
    assert transform(inp, out, "--strict", "--resume") == 0  # the same ids again: nothing redone
    assert len(out_ids(out)) == 4


def test_transform_duplicate_ids_are_an_error(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(encode([*rows(2), rows(1)[0]]))
    assert transform(inp, tmp_path / "out.jsonl", "--strict") == 2
    assert f"{inp}:3: duplicate id 's0' (first at line 1)" in one_line_error(capsys)


@pytest.mark.parametrize("content, message", [
    (b"", "no records (the file is empty)"),
    (b"\n  \n", "no records (the file is empty)"),
    (b"{oops\n", "no usable records (all 1 line(s) are bad)"),
])
def test_empty_input_is_the_same_error_in_transform_and_train(tmp_path, capsys, tiny_folder, content, message):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(content)
    assert transform(inp, tmp_path / "out.jsonl") == 2
    assert one_line_error(capsys) == f"aspd: error: {inp}: {message}"
    assert main(["train", "--model", str(tiny_folder), "--data", str(inp), "--output", str(tmp_path / "run"),
                 "--skip-bad-lines"]) == 2
    assert one_line_error(capsys) == f"aspd: error: {inp}: {message}"
    assert not (tmp_path / "out.jsonl").exists() or not (tmp_path / "out.jsonl").read_text()


# ------------------------------------------------------------------------------------------------- train


def train(tiny_folder, tmp_path, data, *extra: str) -> int:
    return main(["train", "--model", str(tiny_folder), "--data", str(data), "--output", str(tmp_path / "run"),
                 "--max-steps", "1", "--batch-size", "2", "--save-steps", "1000", *extra])


@pytest.mark.parametrize("bad, message", [
    (LATIN1, "not valid UTF-8 (byte 0xe9"),
    (json.dumps({"id": None, "question": "Q?", "answer": ANSWER}).encode(), f"{MUST} null"),
    (json.dumps({"id": "", "question": "Q?", "answer": ANSWER}).encode(), f'{MUST} ""'),
    (json.dumps({"id": True, "question": "Q?", "answer": ANSWER}).encode(), f"{MUST} true"),
    (json.dumps(rows(1)[0]).encode(), "duplicate id 's0' (first at line 1)"),
], ids=["latin1", "null", "empty", "true", "duplicate"])
def test_train_bad_line_is_a_file_line_error(tiny_folder, tmp_path, capsys, bad, message):
    data = tmp_path / "train.jsonl"
    data.write_bytes(encode([rows(1)[0], bad]))
    assert train(tiny_folder, tmp_path, data) == 2
    assert f"{data}:2: {message}" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()  # failed before loading the model


def test_train_skips_bad_lines_and_reads_gzip_with_a_bom(tiny_folder, tmp_path, capsys, one_thread):
    data = tmp_path / "train.jsonl.gz"
    data.write_bytes(gzip.compress(b"\xef\xbb\xbf" + encode([rows(1)[0], LATIN1, *rows(3)[1:]])))
    assert train(tiny_folder, tmp_path, data, "--skip-bad-lines") == 0
    err = capsys.readouterr().err
    assert f"skipping {data}:2: not valid UTF-8" in err and f"{data}: skipped 1 bad line(s)" in err
    assert (tmp_path / "run" / "aspd.json").exists()


# --------------------------------------------------------------------------------------------- the others


def test_pasta_convert_skip_bad_lines_and_gzip(tmp_path, capsys):
    data, out = tmp_path / "in.jsonl.gz", tmp_path / "out.jsonl"
    data.write_bytes(gzip.compress(encode([rows(1)[0], LATIN1, rows(2)[1]])))
    assert main(["pasta", "convert", "--data", str(data), "--out", str(out)]) == 2
    assert f"{data}:2: not valid UTF-8" in one_line_error(capsys)
    assert main(["pasta", "convert", "--data", str(data), "--out", str(out), "--skip-bad-lines"]) == 0
    assert out_ids(out) == ["s0", "s1"]


def test_bench_exact_reads_a_gzip_gold_file(tmp_path, capsys):
    gold = tmp_path / "gold.jsonl.gz"
    gold.write_bytes(gzip.compress(encode([{"question": "1+1?", "answer": "#### 2"}])))
    answers = tmp_path / "results.json"
    answers.write_text(json.dumps({"rows": [{"id": "1", "turn": 1, "label": "a", "messages": [], "text": "It is 2."}]}))
    assert main(["bench", "exact", "--answers", str(answers), "--gold", str(gold)]) == 0
    assert json.loads((tmp_path / "exact.json").read_text())["summary"]["a"]["correct"] == 1


# ---------------------------------------------------------------------------------------------- the module


def test_reader_and_appended_files(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\n{"b": 2}\n')
    assert list(iter_jsonl(p)) == [(1, {"a": 1}), (3, {"b": 2})]
    p.write_bytes(gzip.compress(b'{"a": 1}\n{"b": 2}\n')[:-8])  # a truncated gzip stream
    with pytest.raises(JsonlError, match=r"a\.jsonl:\d+: unreadable from here on"):
        list(iter_jsonl(p))
    with pytest.raises(JsonlError, match=r"cannot read .*nothing\.jsonl"):
        list(iter_jsonl(tmp_path / "nothing.jsonl"))
    # An appended file: a torn last line (even one cut inside a UTF-8 character) is dropped and cut off.
    p.write_bytes(b'{"a": 1}\n{"b": "\xc3')
    assert read_appended(p, repair=True, report=lambda _: None) == [(1, {"a": 1})]
    assert p.read_bytes() == b'{"a": 1}\n'
    p.write_bytes(b'{"a": 1}\n{"b": "\xc3\n{"c": 3}\n')
    with pytest.raises(JsonlError, match=r"a\.jsonl:2: not valid UTF-8"):
        read_appended(p)
    p.write_bytes(gzip.compress(b'{"a": 1}\n'))
    assert read_appended(p) == [(1, {"a": 1})]
    with pytest.raises(JsonlError, match="cannot append"):
        read_appended(p, repair=True)


def test_record_ids():
    ids = RecordIds()
    assert [ids.add(o, n) for n, o in enumerate([{"id": 7}, {}, {"id": "line-2"}, {"id": "line-2.2"}, {}], 1)] \
        == ["7", None, "line-2", "line-2.2", None]
    assert ids.made_up() == {2: "line-2.3", 5: "line-5"}
    with pytest.raises(ValueError, match="duplicate id '7' .first at line 1."):
        ids.add({"id": "7"}, 6)
    for bad in (None, "", False, 2.0, {}):
        with pytest.raises(ValueError, match="'id' must be"):
            ids.add({"id": bad}, 9)


def _gzip_with_bom_and_blank_line(path, rows):
    """gzip told by its magic bytes (no .gz suffix), a BOM, a blank line: what every reader must accept."""
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + b"\n\n".join(json.dumps(r).encode() for r in rows) + b"\n"))
    return path


def test_prompt_and_reply_readers_read_the_one_way(tmp_path):
    from aspd.cli import CLIError
    from aspd.pipeline.spans import read_replies
    from aspd.prompts.text import read_jsonl

    rows = [{"id": "a", "answer": "x"}, {"id": "b", "answer": "y"}]
    path = _gzip_with_bom_and_blank_line(tmp_path / "rows.jsonl", rows)
    assert read_jsonl(path) == [(1, rows[0]), (3, rows[1])]
    assert read_replies([path]) == {"a": ["x"], "b": ["y"]}
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "a", "answer": "x"}\n\xff{}\n')
    with pytest.raises(CLIError, match=r"bad\.jsonl:2: not valid UTF-8"):
        read_jsonl(bad)
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid UTF-8"):
        read_replies([bad])
