"""Self-distillation: batched answers for a prompt file, resumable, torn lines repaired, bad lines named."""

import gzip
import json

import pytest

from aspd.cli import main


def write_prompts(path, n):
    rows = [{"id": f"p{i}", "prompt": f"Give {i} tips.", "context": "About sleep." if i % 2 else ""}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_distill_answers_every_prompt_and_resumes(tiny_folder, tmp_path):
    prompts, out = tmp_path / "p.jsonl", tmp_path / "out.jsonl"
    write_prompts(prompts, 5)
    args = ["distill", "--model", str(tiny_folder), "--prompts", str(prompts), "--output", str(out), "--batch-size", "2",
            "--max-new-tokens", "6", "--temperature", "0", "--device", "cpu", "--keep-bad"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == [f"p{i}" for i in range(5)]
    assert all(isinstance(r["answer"], str) and r["prompt"] for r in rows)
    assert json.loads((tmp_path / "out.jsonl.meta.json").read_text())["sampling"]["max_new_tokens"] == 6
    assert main(args) == 2  # refuses to append to a finished file without --resume
    # A killed run leaves a torn last line; --resume drops it and answers that prompt again, once.
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    assert main([*args, "--resume"]) == 0
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == [f"p{i}" for i in range(5)]


def test_left_padded_batches_answer_as_one_prompt_runs_do(tiny_folder, tmp_path):
    """Greedy answers of a batch (prompts of different lengths, left-padded) equal those of one-prompt runs, also
    when generated in segments: unfinished rows rejoin the queue beside prompts that have not started."""
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 5)
    got = {}
    for size, segment in ((1, 0), (5, 0), (2, 3)):
        out = tmp_path / f"b{size}.jsonl"
        assert main(["distill", "--model", str(tiny_folder), "--prompts", str(prompts), "--output", str(out),
                     "--batch-size", str(size), "--segment", str(segment), "--max-new-tokens", "8",
                     "--temperature", "0", "--device", "cpu", "--engine", "pad", "--keep-bad"]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert all(r["finish"] == "length" for r in rows)  # a random tiny model never ends its turn
        got[size] = {r["id"]: r["answer"] for r in rows}
    assert len(got[1]) == 5 and all(got[1].values())
    assert got[5] == got[1]
    assert got[2] == got[1]


def test_distill_names_bad_line(tiny_folder, tmp_path, capsys):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text('{"id": "a", "prompt": "ok"}\n{"id": "b"}\n')
    code = main(["distill", "--model", str(tiny_folder), "--prompts", str(prompts), "--output", str(tmp_path / "o.jsonl")])
    assert code == 2 and "bad.jsonl:2" in capsys.readouterr().err


def test_loop_reason_catches_repeats_but_not_prose_or_code():
    from aspd.distill import loop_reason

    prose = ("Sleep matters for memory. Exercise strengthens the heart and lungs over time. "
             "A varied diet gives the body what it needs. Water keeps you alert during the day.")
    assert loop_reason(prose) is None
    looped = prose + " I hope this helps you stay healthy every day." * 3
    assert "repeats 3 times" in loop_reason(looped)
    code = "```python\n" + "print('this line is repeated on purpose here')\n" * 6 + "```\nDone."
    assert loop_reason(code) is None
    blocks = "\n\n".join(["**Tip**\nDrink water, sleep well, move often, and eat your greens."] * 40)
    assert loop_reason(blocks) is not None


def test_distill_with_a_system_prompt_drops_cut_answers(tiny_folder, tmp_path):
    """The system prompt steers generation but is not written; answers cut by the limit go to the dropped file."""
    prompts, out = tmp_path / "p.jsonl", tmp_path / "out.jsonl"
    write_prompts(prompts, 3)
    base = ["distill", "--model", str(tiny_folder), "--prompts", str(prompts), "--batch-size", "3",
            "--max-new-tokens", "4", "--temperature", "0", "--device", "cpu", "--parallel-style"]
    assert main([*base, "--output", str(out)]) == 0
    dropped = [json.loads(line) for line in (tmp_path / "out.jsonl.dropped.jsonl").read_text().splitlines()]
    kept = out.read_text().splitlines()
    # A random tiny model never ends its turn within 4 tokens: every answer is cut, so none is kept.
    assert not kept and sorted(r["id"] for r in dropped) == ["p0", "p1", "p2"]
    assert all(r["drop"] == "length" and "system" not in r and "messages" not in r for r in dropped)
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["system"].startswith("You are a careful")
    assert main([*base, "--output", str(out), "--resume"]) == 0  # dropped ids count as done
    assert not out.read_text() and len((tmp_path / "out.jsonl.dropped.jsonl").read_text().splitlines()) == 3
    # --keep-bad writes them to the output instead; the system prompt changed what the model was given.
    out2, out3 = tmp_path / "out2.jsonl", tmp_path / "out3.jsonl"
    assert main([*base, "--output", str(out2), "--keep-bad"]) == 0
    plain = [a for a in base if a != "--parallel-style"]
    assert main([*plain, "--output", str(out3), "--keep-bad"]) == 0
    answers = lambda p: {r["id"]: r["answer"] for r in map(json.loads, p.read_text().splitlines())}  # noqa: E731
    assert len(answers(out2)) == 3 and answers(out2) != answers(out3)


def test_continuous_batching_gives_the_padded_batches_greedy_answers(tiny_folder, tmp_path):
    """--engine cb (transformers' continuous batching) and --engine aspd (aspd's) answer exactly as left-padded
    generate does, greedily."""
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 5)
    base = ["distill", "--model", str(tiny_folder), "--prompts", str(prompts), "--batch-size", "5",
            "--max-new-tokens", "7", "--temperature", "0", "--device", "cpu", "--keep-bad"]
    got = {}
    for engine in ("pad", "cb", "aspd"):
        out = tmp_path / f"{engine}.jsonl"
        assert main([*base, "--engine", engine, "--output", str(out)]) == 0
        got[engine] = {r["id"]: r["answer"] for r in map(json.loads, out.read_text().splitlines())}
    assert len(got["cb"]) == 5 and got["cb"] == got["pad"]
    assert got["aspd"] == got["pad"]  # aspd's own continuous batching too


def test_distill_skip_bad_lines_and_made_up_ids_survive_resume(tiny_folder, tmp_path, capsys):
    prompts, out = tmp_path / "p.jsonl.gz", tmp_path / "out.jsonl"
    lines = [json.dumps({"id": 2, "prompt": "Real id 2."}).encode(), json.dumps({"prompt": "No id."}).encode(),
             json.dumps({"id": None, "prompt": "Null id."}).encode(), b'{"id": "x", "prompt": "Caf\xe9"}']
    prompts.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    args = ["distill", "--model", str(tiny_folder), "--prompts", str(prompts), "--output", str(out),
            "--max-new-tokens", "2", "--temperature", "0", "--device", "cpu", "--keep-bad"]
    assert main(args) == 2
    assert f"{prompts}:3: 'id' must be a non-empty string or an integer, got null" in capsys.readouterr().err
    assert main([*args, "--skip-bad-lines"]) == 0
    err = capsys.readouterr().err
    assert f"skipping {prompts}:3:" in err and f"skipping {prompts}:4: not valid UTF-8" in err
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(map(str, ids)) == ["2", "line-2"]
    assert main([*args, "--skip-bad-lines", "--resume"]) == 0
    assert len(out.read_text().splitlines()) == 2  # nothing answered twice


def test_echo_reason_catches_titles_that_repeat_the_instruction():
    from aspd.distill import PARALLEL_STYLE, drop_reason, echo_reason

    good = ("Basil needs three things.\n\n**Light**: six hours of sun.\n\n**Water**: keep the soil moist.\n\n"
            "**Pruning**: pinch the tops.\n\nWith these, it thrives.")
    assert echo_reason(good) is None and drop_reason(good, "stop") is None
    shape = good.replace("With these, it thrives.", "**Closing Sentence:** With these, it thrives.")
    assert "shape" in echo_reason(shape) and drop_reason(shape, "stop") == "echo"
    generic = "When was the Enlightenment?\n\n1. **Cost**: none.\n2. **Reasons**: ideas.\n3. **Steps**: books."
    assert "cost, reasons, steps" in echo_reason(generic)
    assert echo_reason("**Cost**: a single generic title is fine.") is None
    # Given the question, one instruction word is enough when the question never uses it.
    lone = "It would have spread ideas fast.\n\n**Cost**: printing was dear.\n\n**Art**: new patrons."
    assert "never uses" in echo_reason(lone, "What if the Internet had been invented during the Renaissance?")
    assert echo_reason(lone, "What did books cost in the Renaissance?") is None
    assert drop_reason(lone, "stop", "Why did the Renaissance start in Italy?") == "echo"
    assert drop_reason(good, "length") == "length"
    # The instruction itself no longer offers a title to copy.
    assert "**" not in PARALLEL_STYLE and "closing sentence" not in PARALLEL_STYLE.lower()


def test_iter_answers_names_the_bad_line(tmp_path):
    from aspd.cli import CLIError
    from aspd.distill import iter_answers

    f = tmp_path / "a.jsonl"
    f.write_text('{"id": "a", "answer": "fine"}\n{"id": "b", "answer": 3}\n')
    it = iter_answers(f)
    assert next(it)["answer"] == "fine"
    with pytest.raises(CLIError, match=r"a\.jsonl:2: .*answer"):
        next(it)
