"""`aspd generate` / `aspd chat` end to end on a tiny random Llama saved to disk (no download needed)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from aspd.cli import main, quiet_library_warnings
from aspd.markup import Document, Group, Serial, flatten, parse

# A random model never picks the control tokens (their rows sit at the mean), so force a three-branch group.
PREFIX = "<|title|>Diet<|/title|><|title|>Sleep<|/title|><|title|>Work<|/title|><|para|>"
SUMMARY = re.compile(r"^\d+ tokens in [\d.]+ s · [\d.]+ tok/s · \d+ groups? · ABN [\d.]+ · DP [\d.]+ · P-TPS [\d.]+")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from aspd.testing import tiny_model, tiny_tokenizer
    from aspd.tokens import add_control_tokens

    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    add_control_tokens(tok, model)  # the saved model has rows for the control tokens, as an ASPD model does
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str],
            stdin: str | None = None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def gen_args(model_dir: str, *extra: str) -> list[str]:
    return ["generate", "--model", model_dir, "--answer-prefix", PREFIX, "--max-new-tokens", "40",
            "--max-branch-tokens", "8", *extra]


def test_json_output_parses_and_stats_add_up(model_dir, capsys, monkeypatch):
    rc, out, _ = run_cli(capsys, monkeypatch, [*gen_args(model_dir, "--json"), "Give tips."])
    assert rc == 0
    res = json.loads(out)
    assert set(res) >= {"text", "raw", "markup", "finish_reason", "stats", "model", "mode"}
    st = res["stats"]
    assert res["mode"] == "hybrid" and res["model"] == model_dir
    assert st["groups"] == 1 and st["abn"] == 3.0
    assert 0 <= st["dp"] <= 1 and st["tokens"] >= st["parallel_tokens"] > 0
    assert st["tokens"] <= 40 and res["finish_reason"] in ("stop", "length")
    assert st["dp"] == pytest.approx(st["parallel_tokens"] / st["tokens"], abs=1e-4)
    doc = parse(res["markup"])
    assert [g.titles for g in doc.groups] == [("Diet", "Sleep", "Work")]
    assert res["text"] == flatten(doc)
    assert "<|para|>" in res["raw"] and "<|/para|>" in res["raw"]

    # The CLI is a thin shell: the same settings through the Python API give the same answer.
    from aspd.engine import HybridEngine, Limits
    from aspd.engine.cli import answer_prefix_ids
    from aspd.loading import load_model

    eng = HybridEngine(*load_model(model_dir, device="cpu"))
    g = eng.generate("Give tips.", answer_prefix=answer_prefix_ids(eng, PREFIX),
                     limits=Limits(max_new_tokens=40, max_branch_tokens=8))
    assert g.text == res["text"] and g.raw == res["raw"]


def test_human_output_shows_groups_and_a_speed_summary(model_dir, capsys, monkeypatch):
    rc, out, err = run_cli(capsys, monkeypatch, [*gen_args(model_dir), "Give tips."])
    assert rc == 0
    assert "── parallel group 1 · 3 branches ──" in out
    assert [ln for ln in out.splitlines() if ln.startswith("  ┌ ")] == ["  ┌ Diet", "  ┌ Sleep", "  ┌ Work"]
    assert any(SUMMARY.match(line) for line in err.splitlines()), err


def test_serial_mode_opens_no_group(model_dir, capsys, monkeypatch):
    rc, out, _ = run_cli(capsys, monkeypatch, [*gen_args(model_dir, "--json", "--mode", "serial"), "Give tips."])
    assert rc == 0
    res = json.loads(out)
    assert res["mode"] == "serial"
    assert res["stats"]["groups"] == 0 and res["stats"]["parallel_tokens"] == 0 and res["stats"]["dp"] == 0
    assert "<branchgroup>" not in res["markup"]


def test_prompt_from_stdin_equals_prompt_argument(model_dir, capsys, monkeypatch):
    args = gen_args(model_dir, "--json")
    _, a, _ = run_cli(capsys, monkeypatch, [*args, "Give tips."])
    _, b, _ = run_cli(capsys, monkeypatch, args, stdin="Give tips.\n")
    _, c, _ = run_cli(capsys, monkeypatch, [*args, "-"], stdin="Give tips.")
    texts = [(r["text"], r["raw"]) for r in map(json.loads, (a, b, c))]
    assert texts[0] == texts[1] == texts[2]
    rc, _, err = run_cli(capsys, monkeypatch, args, stdin="  \n")
    assert rc == 2 and "empty prompt" in err


def test_stream_prints_the_same_text_as_json(model_dir, capsys, monkeypatch):
    _, js, _ = run_cli(capsys, monkeypatch, [*gen_args(model_dir, "--json"), "Give tips."])
    rc, streamed, err = run_cli(capsys, monkeypatch, [*gen_args(model_dir, "--stream"), "Give tips."])
    assert rc == 0
    assert streamed == json.loads(js)["text"] + "\n"
    assert any(SUMMARY.match(line) for line in err.splitlines())


def test_system_prompt_and_no_chat_change_the_prompt(model_dir, capsys, monkeypatch):
    base = ["generate", "--model", model_dir, "--max-new-tokens", "3", "--json"]
    pre = {}
    for name, extra in {"chat": [], "system": ["--system", "Be brief."], "raw": ["--no-chat"]}.items():
        rc, out, _ = run_cli(capsys, monkeypatch, [*base, *extra, "Give tips."])
        assert rc == 0
        pre[name] = json.loads(out)["stats"]["prefill_tokens"]
    assert pre["system"] > pre["chat"] > pre["raw"]


def test_sampling_flags(model_dir, capsys, monkeypatch):
    """Each flag reaches the sampler: the CLI's answer is the Python API's answer under the same settings."""
    from aspd.engine import HybridEngine, Limits, SamplingParams
    from aspd.engine.cli import answer_prefix_ids
    from aspd.loading import load_model

    eng = HybridEngine(*load_model(model_dir, device="cpu"))

    def text(*extra: str) -> str:
        rc, out, _ = run_cli(capsys, monkeypatch, [*gen_args(model_dir, "--json", *extra), "Give tips."])
        assert rc == 0
        return json.loads(out)["text"]

    def reference(**sp: float) -> str:
        return eng.generate("Give tips.", answer_prefix=answer_prefix_ids(eng, PREFIX), sampling=SamplingParams(**sp),
                            limits=Limits(max_new_tokens=40, max_branch_tokens=8)).text

    greedy = text()
    assert greedy == reference()
    paper = text("--paper-sampling", "--seed", "1")
    assert paper == reference(temperature=0.7, top_k=20, top_p=0.8, seed=1) != greedy
    assert text("--paper-sampling", "--temperature", "0") == greedy  # explicit flags override the preset
    flags = {"temperature": 1.0, "top_k": 5, "top_p": 0.5, "repetition_penalty": 1.2, "seed": 3}
    argv = [a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    full = text(*argv)
    assert full == reference(**flags) != greedy
    # Every flag counts: leaving any one out changes the answer (each was chosen to matter on this model).
    for k in flags:
        assert reference(**{n: v for n, v in flags.items() if n != k}) != full, k


def test_chat_two_turns_history_and_reset(model_dir, capsys, monkeypatch):
    argv = ["chat", "--model", model_dir, "--max-new-tokens", "12", "--json"]
    rc, out, _ = run_cli(capsys, monkeypatch, argv, stdin="Give tips.\n\nAnd more?\n/exit\nNever read.\n")
    assert rc == 0
    turns = [json.loads(line) for line in out.splitlines()]
    assert len(turns) == 2
    # The second prompt is the chat so far, with the first answer re-entering as its flattened text.
    from aspd.engine import HybridEngine
    from aspd.loading import load_model

    eng = HybridEngine(*load_model(model_dir, device="cpu"))
    history = [{"role": "user", "content": "Give tips."}, {"role": "assistant", "content": turns[0]["text"]},
               {"role": "user", "content": "And more?"}]
    assert turns[1]["stats"]["prefill_tokens"] == len(eng.prompt_ids(history))

    # /reset forgets the first exchange; EOF (no /exit) ends the session too.
    rc, out, err = run_cli(capsys, monkeypatch, argv, stdin="Give tips.\n/reset\nGive tips.\n")
    a, b = (json.loads(line) for line in out.splitlines())
    assert rc == 0 and a["text"] == b["text"] and "history cleared" in err

    # Human-readable chat: one answer per turn, then a summary line on stderr for each.
    rc, out, err = run_cli(capsys, monkeypatch, argv[:-1], stdin="Give tips.\nAnd more?\n")
    assert rc == 0 and sum(bool(SUMMARY.match(line)) for line in err.splitlines()) == 2


@pytest.mark.parametrize(
    "argv,message",
    [
        (["generate", "--model", "no-such-model-xyz", "hi"], "unknown model"),
        (["generate", "--model", "/nonexistent/folder/x", "hi"], "no such model folder"),
        (["generate", "--temperature", "-1", "hi"], "temperature"),
        (["generate", "--top-p", "0", "hi"], "top_p"),
        (["generate", "--max-new-tokens", "0", "hi"], "--max-new-tokens"),
        (["generate", "--json", "--stream", "hi"], "exclude"),
        (["generate", "--no-chat", "--system", "x", "hi"], "--system"),
        (["chat", "--device", "nonsense"], "device"),
        (["generate", "--mode", "pasta", "--stream", "hi"], "drop --stream"),
        (["generate", "--mode", "sot", "--answer-prefix", "x", "hi"], "--answer-prefix"),
    ],
)
def test_user_errors_are_one_line_exit_2(argv, message, capsys, monkeypatch):
    rc, out, err = run_cli(capsys, monkeypatch, argv)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("aspd: error:") and message in err


def test_bad_flag_value_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--temperature", "warm", "hi"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--temperature" in err


def test_pasta_mode_needs_a_model_with_pasta_tags(model_dir, tmp_path, capsys, monkeypatch):
    rc, out, err = run_cli(capsys, monkeypatch, ["generate", "--model", model_dir, "--mode", "pasta", "hi"])
    assert rc == 2 and out == "" and "--format pasta" in err and len(err.strip().splitlines()) == 1

    from aspd.loading import load_model
    from aspd.pasta.tokens import add_pasta_tokens

    model, tok = load_model(model_dir, device="cpu")
    add_pasta_tokens(tok, model)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    rc, out, _ = run_cli(capsys, monkeypatch, ["generate", "--model", str(tmp_path), "--mode", "pasta", "--json",
                                               "--max-new-tokens", "12", "Give tips."])
    res = json.loads(out)
    # The random model never picks a tag (rows at the mean): a plain answer whose markup is its text.
    assert rc == 0 and res["mode"] == "pasta" and res["stats"]["tokens"] <= 12
    assert res["markup"].strip() == res["text"] and res["stats"]["parallel_tokens"] == 0


def test_sot_mode_answers_through_the_cli(model_dir, capsys, monkeypatch):
    rc, out, err = run_cli(capsys, monkeypatch, ["generate", "--model", model_dir, "--mode", "sot", "--json",
                                                 "--max-new-tokens", "24", "Give tips."])
    res = json.loads(out)
    assert rc == 0 and res["mode"] == "sot" and res["text"] and res["stats"]["tokens"] > 0
    assert "answer serially" not in err  # SoT needs no trained control tokens
    assert flatten(parse(res["markup"])) == res["text"]


def test_answer_prefix_is_tokenized_per_segment(model_dir):
    from aspd.engine import HybridEngine
    from aspd.engine.cli import answer_prefix_ids
    from aspd.loading import load_model
    from aspd.tokens import text_ids

    eng = HybridEngine(*load_model(model_dir, device="cpu"))
    c, tok = eng.ctrl, eng.tokenizer
    assert answer_prefix_ids(eng, "Tips:<|title|>Diet<|/title|><|para|>") == [
        *text_ids(tok, "Tips:"), c.title, *text_ids(tok, "Diet"), c.title_end, c.para]


def test_format_answer_draws_groups():
    from aspd.engine.cli import format_answer
    from aspd.markup import Branch

    doc = Document((Serial("Tips:\n"), Group((Branch("A", "one\ntwo"), Branch("B", ""))), Serial("\nDone.")))
    assert format_answer(doc).splitlines() == [
        "Tips:", "── parallel group 1 · 2 branches ──", "  ┌ A", "  │ one", "  │ two", "  ┌ B", "  │", "  └", "Done."]
    listed = Document((Group((Branch("1. **Diet**:", " Eat greens.\nLess sugar."), Branch("2. **Sleep**:", " Eight hours."))),))
    assert format_answer(listed).splitlines() == [  # a shown title once, at the head of its box
        "── parallel group 1 · 2 branches ──", "  ┌ 1. **Diet**: Eat greens.", "  │ Less sugar.",
        "  ┌ 2. **Sleep**: Eight hours.", "  └"]


def test_real_subprocess(model_dir):
    """The installed entry point, as a user runs it: JSON on stdout; a load error is one stderr line, exit 2."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "aspd.cli"]
    ok = subprocess.run([*cmd, *gen_args(model_dir, "--json"), "Give tips."], capture_output=True, text=True,
                        env=env, timeout=120, cwd=Path(model_dir).parent)
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == ""  # no library FutureWarnings (e.g. transformers' `past_key_values` notice) on a clean run
    res = json.loads(ok.stdout)
    assert res["stats"]["groups"] == 1 and res["text"] == flatten(parse(res["markup"]))
    bad = subprocess.run([*cmd, "generate", "--model", "no-such-model-xyz", "hi"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_cli_hides_library_deprecations_but_not_aspd_warnings(monkeypatch):
    monkeypatch.setattr(sys, "warnoptions", [])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_library_warnings()
        for message, category, module in [
            ("old kwarg", FutureWarning, "torch.nn.modules.module"),  # where transformers' deprecations land
            ("old API", FutureWarning, "transformers.modeling_utils"),
            ("'pin_memory' argument is set as true but no accelerator is found", UserWarning,
             "torch.utils.data.dataloader"),
            ("CUDA graph capture failed", UserWarning, "aspd.engine.kv"),  # aspd's own: kept
            ("bad generation flag", UserWarning, "transformers.generation.utils"),  # may concern the input: kept
            ("deprecated", FutureWarning, "torchvisionlike"),  # not one of the libraries: kept
        ]:
            warnings.warn_explicit(message, category, "f.py", 1, module=module)
    assert [str(w.message) for w in seen] == ["CUDA graph capture failed", "bad generation flag", "deprecated"]
