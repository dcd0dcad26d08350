"""`aspd bench`: question sets, interleaved speed runs, aggregates, NLL, CLI; tiny random models saved to disk."""

from __future__ import annotations

import glob
import json
import math
import shutil
import tempfile
import tomllib
from pathlib import Path

import pytest
import torch

import aspd
from aspd.bench.data import (
    SHIPPED_DIR,
    BenchDataError,
    find_bench_dir,
    load_questions,
    parse_questions,
    resolve_bench,
)
from aspd.bench.metrics import aggregate, quantile, speedup
from aspd.bench.nll import answer_nll, nll_summary, score_rows
from aspd.bench.quality import default_reference_file, load_judge_prompts, load_references
from aspd.bench.speed import load_engines, parse_spec, parse_specs, rotated, run_speed
from aspd.cli import main
from aspd.engine import Limits, SamplingParams

# A random model never picks the control tokens by itself: force a three-branch group in hybrid answers.
PREFIX = "<|title|>Diet<|/title|><|title|>Sleep<|/title|><|title|>Work<|/title|><|para|>"
QUESTIONS = [
    {"question_id": 1, "category": "generic", "turns": ["Give tips."]},
    {"question_id": 2, "category": "writing", "turns": ["Name three languages.", "Now explain the first one."]},
    {"question_id": 3, "category": "generic", "turns": ["What is the capital of France?"]},
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _save(folder: Path, seed: int, control: bool) -> str:
    from aspd.testing import tiny_model, tiny_tokenizer
    from aspd.tokens import add_control_tokens

    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok), seed=seed)
    if control:  # an "ASPD model": the saved tokenizer and embeddings have the control tokens
        add_control_tokens(tok, model)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(an ASPD-like tiny model, a plain tiny model that stands in for the Seq / original model)."""
    root = tmp_path_factory.mktemp("bench-models")
    return _save(root / "aspd", 0, True), _save(root / "plain", 1, False)


@pytest.fixture(scope="module")
def qfile(tmp_path_factory: pytest.TempPathFactory) -> str:
    f = tmp_path_factory.mktemp("bench-data") / "questions.jsonl"
    f.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return str(f)


@pytest.fixture(scope="module")
def speed_run(models, qfile):
    a, b = models
    specs = parse_specs([a], [b, f"{a}:serial"])
    engines = load_engines(specs, device="cpu")
    # A cap of 8 holds each branch's prefix (up to 6 tokens) and its end.
    rows, warm = run_speed(engines, specs, load_questions(qfile), limits=Limits(max_new_tokens=24, max_branch_tokens=8),
                           answer_prefix=PREFIX)
    return specs, engines, rows, warm


# ------------------------------------------------------------------------------------------ data


def test_quantiles_interpolate_linearly():
    assert quantile([4, 1, 3, 2], 0.25) == 1.75 and quantile([5], 0.9) == 5 and quantile([], 0.5) is None


def test_shipped_question_sets_parse():
    mt = load_questions(SHIPPED_DIR / "mt_bench.jsonl")
    assert len(mt) == 80 and all(len(q.turns) == 2 for q in mt)
    vicuna = load_questions(SHIPPED_DIR / "vicuna_bench.jsonl")
    assert len(vicuna) == 80 and all(len(q.turns) == 1 for q in vicuna)
    assert set(load_judge_prompts(SHIPPED_DIR / "judge_prompts.jsonl")) >= {"single-v1", "single-math-v1"}
    for name in ("mt_bench", "vicuna_bench"):
        ref = default_reference_file(SHIPPED_DIR, f"{name}.jsonl")
        assert ref is not None and load_references(ref)
    assert "Apache License" in (SHIPPED_DIR / "NOTICE").read_text()
    assert not list(SHIPPED_DIR.rglob("rag_bench*"))  # academic-use-only: never shipped
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "bench"
    if shared.is_dir():  # the checkout's copies: the shipped ones must not drift from them
        for f in SHIPPED_DIR.rglob("*.jsonl"):
            assert f.read_bytes() == (shared / f.relative_to(SHIPPED_DIR)).read_bytes(), f
        assert load_questions(resolve_bench("rag", shared), limit=5)[0].category == "rag"


def test_package_data_declares_every_shipped_file():
    """What a wheel carries is what pyproject.toml's package-data globs match: every shipped file must match."""
    pkg = Path(aspd.__file__).parent
    conf = tomllib.loads((pkg.parents[1] / "pyproject.toml").read_text())
    patterns = conf["tool"]["setuptools"]["package-data"]["aspd"]
    declared = {Path(f) for pat in patterns for f in glob.glob(pat, root_dir=pkg)}
    shipped = {f.relative_to(pkg) for f in SHIPPED_DIR.rglob("*") if f.is_file()}
    assert shipped and shipped <= declared, shipped - declared


@pytest.fixture
def outside_shared(tmp_path: Path):
    """A directory with no shared/data/bench above it. pytest's tmp_path is not one when the checkout was cloned
    into /tmp with ../shared beside it (/tmp/shared is then above it): other scratch places are tried."""
    for base in (tmp_path, Path.home(), Path("/var/tmp"), Path("/dev/shm")):
        if base.is_dir() and not any((p / "shared" / "data" / "bench").is_dir() for p in (base, *base.parents)):
            d = base if base == tmp_path else Path(tempfile.mkdtemp(dir=base))
            yield d
            if d != tmp_path:
                shutil.rmtree(d, ignore_errors=True)
            return
    pytest.skip("every scratch directory here has a shared/data/bench above it")


def test_bench_shortcuts_work_outside_the_checkout(tmp_path, outside_shared, monkeypatch, capsys):
    """From a directory with no shared/data/bench above it and no $ASPD_BENCH_DIR: the shipped files."""
    monkeypatch.delenv("ASPD_BENCH_DIR", raising=False)
    monkeypatch.chdir(outside_shared)
    assert find_bench_dir() == SHIPPED_DIR
    assert resolve_bench("vicuna") == SHIPPED_DIR / "vicuna_bench.jsonl"
    assert len(load_questions(resolve_bench("mt"), limit=3)) == 3
    with pytest.raises(BenchDataError, match=r"--bench rag: rag_bench\.jsonl is not shipped .*--bench-dir DIR"):
        resolve_bench("rag")
    # the CLI says so in one line, before loading any model
    assert main(["bench", "speed", "--model", "no-such-model", "--bench", "rag"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("aspd: error: --bench rag:") and "--bench-dir" in err
    # --bench-dir still overrides the shipped files, and names the file it lacks
    own = tmp_path / "own"
    own.mkdir()
    (own / "rag_bench.jsonl").write_text(json.dumps(QUESTIONS[0]) + "\n")
    assert load_questions(resolve_bench("rag", own))[0].turns == ("Give tips.",)
    with pytest.raises(BenchDataError, match="--bench vicuna: no vicuna_bench.jsonl in"):
        resolve_bench("vicuna", own)


def test_malformed_jsonl_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(QUESTIONS[0]) + "\n\n{not json\n")
    with pytest.raises(BenchDataError, match=r"bad\.jsonl:3: not valid JSON"):
        load_questions(f)
    cases = {'{"turns": []}': "non-empty list", '{"turns": ["a", 3]}': "non-empty string", "[1]": "JSON object",
             '{"category": "x"}': "needs 'turns'"}
    for line, msg in cases.items():
        with pytest.raises(BenchDataError, match=f"src:1: .*{msg}"):
            parse_questions([line], "src")
    with pytest.raises(BenchDataError, match="src:2: duplicate question_id '7'"):
        parse_questions(['{"question_id": 7, "question": "a"}', '{"question_id": 7, "question": "b"}'], "src")
    q = parse_questions(['{"question": "hi"}'], "src")[0]
    assert (q.id, q.category, q.turns) == ("1", "general", ("hi",))


def test_bench_dir_from_env_and_from_parents(tmp_path, monkeypatch):
    bench = tmp_path / "shared" / "data" / "bench"
    bench.mkdir(parents=True)
    (bench / "vicuna_bench.jsonl").write_text(json.dumps(QUESTIONS[0]) + "\n")
    inner = tmp_path / "repo" / "src"
    inner.mkdir(parents=True)
    monkeypatch.delenv("ASPD_BENCH_DIR", raising=False)
    assert find_bench_dir(cwd=inner) == bench
    monkeypatch.setenv("ASPD_BENCH_DIR", str(bench))
    assert load_questions(resolve_bench("vicuna"))[0].turns == ("Give tips.",)
    with pytest.raises(BenchDataError, match="neither"):
        resolve_bench("no-such-bench")


def test_model_specs():
    assert parse_spec("m") == parse_spec("m", "model")
    assert (parse_spec("m").mode, parse_spec("m", "baseline").mode) == ("hybrid", "serial")
    s = parse_spec("/models/x:y:serial", "model")
    assert (s.name, s.mode, s.label) == ("/models/x:y", "serial", "/models/x:y:serial")
    assert parse_spec("/models/x:y").name == "/models/x:y"  # a colon that is not a mode stays in the name
    with pytest.raises(ValueError, match="twice"):
        parse_specs(["a"], ["a"])
    assert rotated([1, 2, 3], 4) == [2, 3, 1]
    s = parse_spec("/m/x:hybrid@shared/same-max")
    assert (s.name, s.mode, s.mask_mode, s.pos_mode, s.key) == ("/m/x", "hybrid", "shared", "same-max",
                                                                "/m/x@shared/same-max")
    assert parse_spec("/m/x").key == "/m/x" and parse_spec("me@host").name == "me@host"  # no '/': part of the name
    with pytest.raises(ValueError, match="MASK/POS"):
        parse_spec("m@indep/nowhere")


def test_mode_variants_share_the_weights(models):
    a, _ = models
    specs = parse_specs([f"{a}@shared/same-re", f"{a}@indep/predict"], [f"{a}:serial"])
    engines = load_engines(specs, device="cpu")
    variant, other, base = (engines[s.key] for s in specs)
    assert variant.model is base.model and other.model is base.model
    assert (variant.mask_mode.value, variant.pos_mode.value) == ("shared", "same-re")
    assert (other.mask_mode.value, other.pos_mode.value, base.pos_mode.value) == ("indep", "predict", "same-seq")


# ------------------------------------------------------------------------------------------ speed


def test_rows_numbers_add_up(speed_run):
    specs, engines, rows, warm = speed_run
    a, b, a_serial = (s.label for s in specs)
    assert [w["label"] for w in warm] == [a, b, a_serial]  # one warm-up per model, before any question
    assert len(rows) == 4 * 3  # 4 (question, turn) pairs x 3 models
    for r in rows:
        assert 0 <= r["dp"] <= 1 and 0 <= r["parallel_tokens"] <= r["tokens"] <= 24
        assert r["tps"] == pytest.approx(r["visible_tokens"] / r["seconds"])
        tok = engines[r["model"]].tokenizer
        assert r["visible_tokens"] == len(tok(r["text"], add_special_tokens=False)["input_ids"])
        assert r["groups"] == len(r["branches"]) and r["finish_reason"] in ("stop", "length")
        if r["label"] == a:  # forced group: three branches, decoded in parallel
            assert r["branches"] == [3] and r["abn"] == 3.0 and r["parallel_tokens"] > 0
            assert r["dp"] == pytest.approx(r["parallel_tokens"] / r["tokens"])
            assert "<branchgroup>" in r["markup"]
        else:
            assert r["groups"] == 0 and r["dp"] == 0 and r["parallel_tps"] == 0
    agg = aggregate(rows, [a, b, a_serial], [a], [b, a_serial])
    for lab, s in agg["overall"].items():
        mine = [r for r in rows if r["label"] == lab]
        assert s["answers"] == 4 and s["tokens"] == sum(r["tokens"] for r in mine)  # each answer counted once
        assert s["visible_tokens"] == sum(r["visible_tokens"] for r in mine)
        assert 0 <= s["ppd"] <= 1 and 0 <= s["dp_mean"] <= 1
        assert s["tps_median"] == pytest.approx(quantile([r["tps"] for r in mine], 0.5))
    assert agg["overall"][a]["ppd"] == 1 and agg["overall"][a]["abn"] == 3.0
    assert agg["overall"][b]["ppd"] == 0 and agg["overall"][b]["abn"] is None
    assert agg["overall"][b]["parallel_tps_median"] is None
    assert sum(c[a]["answers"] for c in agg["by_category"].values()) == 4
    # Speedup: median over questions of the per-question TPS ratio; ratio of medians reported beside it.
    sp = next(s for s in agg["speedups"] if s["category"] == "all" and s["baseline"] == b)
    ratios = sorted(m["tps"] / n["tps"] for m in rows for n in rows
                    if m["label"] == a and n["label"] == b and (m["id"], m["turn"]) == (n["id"], n["turn"]))
    assert sp["pairs"] == 4 and sp["speedup_median"] == pytest.approx((ratios[1] + ratios[2]) / 2)
    assert sp["speedup_p25"] <= sp["speedup_median"] <= sp["speedup_p75"]
    med = lambda lab: quantile([r["tps"] for r in rows if r["label"] == lab], 0.5)  # noqa: E731
    assert sp["ratio_of_medians"] == pytest.approx(med(a) / med(b))
    assert {(s["category"], s["baseline"]) for s in agg["speedups"]} == {
        (c, x) for c in ("all", "generic", "writing") for x in (b, a_serial)}


def test_questions_interleaved_with_rotating_order(speed_run):
    specs, _, rows, _ = speed_run
    labels = [s.label for s in specs]
    assert [r["run_index"] for r in rows] == list(range(len(rows)))
    blocks = [rows[i : i + 3] for i in range(0, len(rows), 3)]  # one block per (question, turn)
    expected_q = [(0, 1), (1, 1), (1, 2), (2, 1)]
    for (qi, turn), block in zip(expected_q, blocks, strict=True):
        assert {r["id"] for r in block} == {str(QUESTIONS[qi]["question_id"])} and {r["turn"] for r in block} == {turn}
        assert [r["label"] for r in block] == rotated(labels, qi)  # question i starts with model i mod n
        assert {r["seed"] for r in block} == {qi}  # every model draws the same seed on a question


def test_mt_second_turn_sees_first_answer(speed_run):
    _, engines, rows, _ = speed_run
    for lab in {r["label"] for r in rows}:
        t1, t2 = (next(r for r in rows if r["label"] == lab and r["id"] == "2" and r["turn"] == t) for t in (1, 2))
        assert t2["messages"] == [{"role": "user", "content": "Name three languages."},
                                  {"role": "assistant", "content": t1["text"]},
                                  {"role": "user", "content": "Now explain the first one."}]
        # The engine really read that history: its prefill is exactly the templated chat.
        assert t2["prefill_tokens"] == len(engines[t1["model"]].prompt_ids(t2["messages"])) > t1["prefill_tokens"]


def test_same_seed_per_question_for_every_model(models, qfile):
    """Two copies of one model under different labels sample identical answers: they draw the same seeds."""
    a, _ = models
    specs = parse_specs([f"{a}:serial"], [f"{a}/:serial"])
    engines = load_engines(specs, device="cpu")
    sp = SamplingParams(temperature=1.0, seed=5)
    rows, _ = run_speed(engines, specs, load_questions(qfile, limit=2), sampling=sp, limits=Limits(max_new_tokens=8),
                        warmup=0)
    by = {(r["label"], r["id"], r["turn"]): r["text"] for r in rows}
    assert all(by[(specs[0].label, i, t)] == by[(specs[1].label, i, t)] for i, t in (("1", 1), ("2", 1), ("2", 2)))
    assert {r["seed"] for r in rows} == {5, 6}


# ------------------------------------------------------------------------------------------ NLL


def test_nll_equals_a_direct_computation(models, speed_run):
    from aspd.loading import load_model
    from aspd.sample import prompt_ids
    from aspd.tokens import text_ids

    _, b = models
    _, _, rows, _ = speed_run
    ref, tok = load_model(b, device="cpu", dtype="float32")
    row = next(r for r in rows if r["turn"] == 2 and r["visible_tokens"] > 0)
    total, n = answer_nll(ref, tok, row["messages"], row["text"])
    p, ans = prompt_ids(tok, row["messages"]), text_ids(tok, row["text"])
    with torch.no_grad():
        logits = ref(input_ids=torch.tensor([p + ans])).logits[0]
    direct = -sum(torch.log_softmax(logits[len(p) + i - 1], -1)[t].item() for i, t in enumerate(ans))
    assert n == len(ans) and total == pytest.approx(direct, rel=1e-4)
    # Control-token strings are not scored: they are not visible text.
    assert answer_nll(ref, tok, row["messages"], "<|title|>" + row["text"]) == pytest.approx((total, n))
    assert answer_nll(ref, tok, row["messages"], "") == (0.0, 0)

    copies = [dict(r) for r in rows]
    score_rows(copies, ref, tok)
    summary = nll_summary(copies)
    lab = row["label"]
    mine = [r for r in copies if r["label"] == lab and r["nll_tokens"]]
    assert summary[lab]["nll_mean"] == pytest.approx(sum(r["nll_sum"] for r in mine) / sum(r["nll_tokens"] for r in mine))
    assert math.isfinite(summary[lab]["nll_median"]) and summary[lab]["scored_answers"] == len(mine)


# ------------------------------------------------------------------------------------------ CLI


def test_cli_end_to_end(models, qfile, tmp_path, capsys):
    a, b = models
    out = tmp_path / "res"
    argv = ["bench", "speed", "--model", a, "--baseline", b, "--baseline", f"{a}:serial", "--bench", qfile,
            "--limit", "2", "--out", str(out), "--device", "cpu", "--max-new-tokens", "30",
            "--max-branch-tokens", "8", "--answer-prefix", PREFIX, "--nll-model", b]
    assert main(argv) == 0
    stdout, stderr = capsys.readouterr()
    res = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert len(res["rows"]) == 3 * 3 and "[9/9]" in stderr
    cfg = res["config"]
    assert "aspd bench speed --model" in cfg["command"] and "--nll-model" in cfg["command"]
    assert [m["label"] for m in cfg["models"]] == [a, b, f"{a}:serial"]
    assert [m["mode"] for m in cfg["models"]] == ["hybrid", "serial", "serial"]
    assert cfg["sampling"]["temperature"] == 0 and cfg["limits"]["max_new_tokens"] == 30
    assert {"cpu", "torch", "date", "transformers"} <= set(res["machine"])
    overall = res["aggregates"]["overall"]
    assert overall[a]["ppd"] == 1 and overall[b]["ppd"] == 0 and overall[a]["nll_mean"] > 0
    assert all(r["nll"] is None or r["nll"] > 0 for r in res["rows"])
    for text in (md, stdout):
        assert "| model | role | answers | TPS | P-TPS | DP | ABN | PPD |" in text
        assert "speedup (median)" in text and f"| {a} | model | 3 |" in text
    assert "## By category" in md and "WARNING" in md  # two categories; forced structure is flagged

    # `bench nll` on the same answers with the same reference gives the numbers speed put in the report.
    assert main(["bench", "nll", "--answers", str(out / "results.json"), "--model", b, "--device", "cpu",
                 "--out", str(tmp_path / "nll.json")]) == 0
    nll = json.loads((tmp_path / "nll.json").read_text())
    assert nll["summary"][a]["nll_mean"] == pytest.approx(overall[a]["nll_mean"])
    assert "NLL mean" in capsys.readouterr().out


def test_cli_ablation_runs_every_mode_against_serial(models, qfile, tmp_path, capsys):
    a, _ = models
    out = tmp_path / "abl"
    argv = ["bench", "ablation", "--model", a, "--modes", "indep/same-seq,shared/same-re", "--bench", qfile,
            "--limit", "1", "--out", str(out), "--device", "cpu", "--max-new-tokens", "30",
            "--max-branch-tokens", "8", "--answer-prefix", PREFIX]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    got = [(m["label"], m["mode"], m["mask_mode"], m["pos_mode"]) for m in res["config"]["models"]]
    assert got == [(f"{a}@indep/same-seq", "hybrid", "indep", "same-seq"),
                   (f"{a}@shared/same-re", "hybrid", "shared", "same-re"), (f"{a}:serial", "serial", "indep", "same-seq")]
    assert len(res["rows"]) == 3 and {r["label"] for r in res["rows"] if r["groups"]} == {g[0] for g in got[:2]}
    assert "speedup (median)" in capsys.readouterr().out
    assert main([*argv[:4], "--modes", "indep/sideways", *argv[6:]]) == 2
    assert "MASK/POS" in capsys.readouterr().err


def test_a_killed_run_resumes_without_losing_or_repeating_answers(models, qfile, tmp_path, capsys, monkeypatch):
    import aspd.bench.cli as bench_cli

    a, b = models
    argv = ["bench", "speed", "--model", a, "--baseline", b, "--bench", qfile, "--device", "cpu",
            "--max-new-tokens", "30", "--max-branch-tokens", "8", "--answer-prefix", PREFIX, "--temperature", "0.8"]
    full = tmp_path / "full"
    assert main([*argv, "--out", str(full)]) == 0
    want = json.loads((full / "results.json").read_text())["rows"]

    # Kill a run after its fourth row (q1: 2 rows, q2: 2 of its 4), then tear its last line as a crash would.
    real = bench_cli._progress

    def dying(total):
        show = real(total)

        def step(r):
            show(r)
            if r["run_index"] == 3:
                raise KeyboardInterrupt

        return step

    monkeypatch.setattr(bench_cli, "_progress", dying)
    out = tmp_path / "killed"
    assert main([*argv, "--out", str(out)]) == 130  # Ctrl-C: "aspd: interrupted"
    monkeypatch.setattr(bench_cli, "_progress", real)
    partial = out / "rows.partial.jsonl"
    with partial.open("a") as f:
        f.write('{"id": "2", "tu')
    capsys.readouterr()

    assert main([*argv, "--out", str(out)]) == 2  # an unfinished run is never overwritten silently
    assert "--resume" in capsys.readouterr().err
    other = ["31" if x == "30" else x for x in argv]
    assert main([*other, "--out", str(out), "--resume"]) == 2
    assert "other settings (limits)" in capsys.readouterr().err  # other settings cannot resume it
    kept = [json.loads(x) for x in partial.read_text().splitlines()[1:3]]

    assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert "1 of 3 questions already answered" in capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert not partial.exists() and res["config"]["resumed_rows"] == 2
    got = res["rows"]
    assert got[:2] == kept  # q1 is kept as measured, not asked again
    key = ("id", "turn", "label", "seed", "position", "text")
    assert [tuple(r[k] for k in key) for r in got] == [tuple(r[k] for k in key) for r in want]
    assert [r["run_index"] for r in got] == list(range(len(want)))


@pytest.mark.parametrize("extra,message", [
    (["--bench", "BAD"], "bad.jsonl:2: not valid JSON"),
    (["--bench", "no-such-bench"], "neither"),
    (["--bench", "Q", "--baseline", "M"], "given twice"),
    (["--bench", "Q", "--limit", "0"], "--limit"),
    (["--bench", "Q", "--temperature", "-1"], "temperature"),
    (["--bench", "Q", "--baseline", "M:pasta"], "no PASTA tags"),
])
def test_cli_user_errors_are_one_line(extra, message, models, qfile, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(QUESTIONS[0]) + "\n{oops\n")
    subst = {"BAD": str(bad), "Q": qfile, "M": models[0], "M:pasta": f"{models[0]}:pasta"}
    argv = ["bench", "speed", "--model", models[0], *(subst.get(x, x) for x in extra)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("aspd: error:") and message in err


def test_sot_runs_beside_serial_from_the_chat_messages(models, qfile):
    from aspd.markup import flatten, parse

    a, b = models
    specs = parse_specs([f"{b}:sot"], [b])
    engines = load_engines(specs, device="cpu")
    assert engines[specs[0].key] is engines[specs[1].key]  # one model, two modes
    rows, _ = run_speed(engines, specs, load_questions(qfile, limit=1), limits=Limits(max_new_tokens=20))
    sot = [r for r in rows if r["mode"] == "sot"]
    assert len(sot) == len(rows) // 2 >= 1
    for r in sot:
        assert r["messages"][-1]["role"] == "user" and r["tokens"] > 0 and 0 <= r["dp"] <= 1
        assert flatten(parse(r["markup"])) == r["text"]


def test_an_answer_cut_by_the_budget_counts_as_truncated(models, qfile):
    """Titles with no budget left for their group, then the end of turn: the budget cut the answer, so the row
    says `length` and the report counts it as truncated; with budget to spare the same end of turn is a stop."""
    from aspd.bench.metrics import summarize
    from aspd.engine.cli import answer_prefix_ids

    a, _ = models
    specs = parse_specs([a], [])
    engines = load_engines(specs, device="cpu")
    titles = PREFIX.replace("<|para|>", "")
    forced = len(answer_prefix_ids(engines[specs[0].key], titles))
    counts = {}
    for budget in (forced + 1, forced + 30):  # <|para|> and three branch ends need 4 tokens after the titles
        rows, _ = run_speed(engines, specs, load_questions(qfile, limit=1), warmup=0,
                            answer_prefix=titles + "<|im_end|>", limits=Limits(max_new_tokens=budget, max_branch_tokens=8))
        assert [r["text"] for r in rows] == ["DietSleepWork"]
        counts[budget] = (rows[0]["finish_reason"], summarize(rows)["truncated"])
    assert counts == {forced + 1: ("length", 1), forced + 30: ("stop", 0)}


def test_speedup_skips_empty_answers():
    row = dict(id="1", turn=1, category="c", tps=10.0, seconds=1.0)
    rows = [{**row, "label": "m"}, {**row, "label": "b", "tps": 5.0},
            {**row, "id": "2", "label": "m"}, {**row, "id": "2", "label": "b", "tps": 0.0}]
    s = speedup(rows, "m", "b")
    assert s["pairs"] == 1 and s["speedup_median"] == 2.0 and s["ratio_of_medians"] == 2.0
