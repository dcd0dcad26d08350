"""The transform pipeline through REAL HTTP against `aspd serve` with a tiny random model.

A random model cannot follow the reply protocol, so every reply is unparseable and every sample must come
out exactly once with its original answer; the summary numbers must add up. The model's end-of-turn rows
are zeroed (as in test_serve.py) so each reply is exactly max_tokens long: token counts are exact.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from serverutil import running_server

from aspd.cli import main
from aspd.pipeline.backends.openai_compat import OpenAICompatBackend
from aspd.pipeline.parsing import to_candidate
from aspd.pipeline.rules import split_head
from aspd.pipeline.runner import RunConfig, run_transform
from aspd.pipeline.stages import StageConfig
from aspd.pipeline.types import Candidate, Sample
from aspd.sample import end_of_turn_ids
from aspd.testing import tiny_model, tiny_tokenizer
from aspd.tokens import add_control_tokens

MODEL_ID = "tiny-llama"
SHORT_PROMPTS = {  # the default prompts do not fit the tiny model's 512-token context
    "rewrite_system": "Mark independent parts. Reply PARALLEL: yes|no, then <<<ANSWER ... ANSWER>>>.",
    "rewrite_user": "{{answer}}",
    "independence_system": "Independent? Reply VERDICT: true|false and REASON.",
    "independence_user": "{{branches}}",
    "integrity_system": "Same structure? VERDICT/REASON.",
    "integrity_user": "{{original}} || {{candidate}}",
    "answer_system": "Same answer? VERDICT/REASON.",
    "answer_user": "{{original}} || {{candidate}}",
}


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("pipeline-serve")
    folder = root / MODEL_ID
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    add_control_tokens(tok, model)
    with torch.no_grad():  # a random model then never ends early: replies are exactly max_tokens long
        for i in {*end_of_turn_ids(tok), tok.eos_token_id}:
            model.get_output_embeddings().weight[i] = 0
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    log = root / "server.log"
    with running_server(folder, log, max_queue=64, log_level="warning", timeout=90) as (url, proc):
        yield f"{url}/v1"


ANSWERS = [
    "Three tips:\n- Eat a balanced diet.\n- Exercise regularly.\n- Sleep well.\nHabits matter.",
    "Paris is the capital of France.",
    "Gross pay is hours times rate.\nFuel cost is distance divided by efficiency times price.",
    "Python, Rust and Go are programming languages.",
    "1. Eat well.\n2. Sleep well.",
]


def write_inputs(path: Path) -> Path:
    rows = [{"id": f"r{i}", "prompt": f"Question {i}", "context": "ctx" if i % 2 else "", "answer": a, "tag": i}
            for i, a in enumerate(ANSWERS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def check_all_serial(out: Path) -> list[dict[str, Any]]:
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in recs) == [f"r{i}" for i in range(len(ANSWERS))]  # each exactly once
    for r in recs:
        assert r["parallel"] is False and r["markup"] == r["answer"] == ANSWERS[r["tag"]]
    return recs


def test_transform_against_aspd_serve(server_url: str, tmp_path: Path) -> None:
    inp = write_inputs(tmp_path / "in.jsonl")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(SHORT_PROMPTS))
    out = tmp_path / "out.jsonl"
    args = ["transform", "--input", str(inp), "--output", str(out), "--base-url", server_url, "--model", MODEL_ID,
            "--prompts", str(prompts), "-n", "2", "-k", "3", "--max-tokens", "12", "--judge-max-tokens", "6",
            "--concurrency", "4", "--timeout", "60", "--backoff", "0.05", "--no-progress"]
    assert main(args) == 0
    recs = check_all_serial(out)
    s = json.loads(Path(f"{out}.summary.json").read_text())
    n = len(ANSWERS)
    assert s["samples"] == n and s["parallel_samples"] == 0 and s["serial_samples"] == n
    acc = s["acceptance"]
    assert acc["candidates_in"] == 2 * n and acc["passed_checks"] == 0 and acc["passed_answer"] == 0
    assert sum(s["drops"].values()) == acc["candidates_in"] - acc["passed_checks"]
    assert s["ppd"]["after"] == s["dp"]["after"] == s["abn"]["after"] == 0.0
    calls = s["llm"]["calls"]
    assert calls == 2 * n and s["llm"]["cache_hits"] == 0 and not s["failures"].get("request_failed")
    assert s["llm"]["completion_tokens"] == 12 * calls and s["llm"]["prompt_tokens"] > 0
    assert s["failures"].get("unparseable_reply", 0) == s["drops"].get("reply_format", 0)
    assert sum(r["stats"]["llm_calls"] for r in recs) == calls
    # Again into a new output: the cache answers every request.
    out2 = tmp_path / "out2.jsonl"
    assert main([*args[:4], str(out2), *args[5:], "--cache-dir", f"{out}.cache"]) == 0
    check_all_serial(out2)
    s2 = json.loads(Path(f"{out2}.summary.json").read_text())
    assert s2["llm"]["calls"] == 0 and s2["llm"]["cache_hits"] == calls


def test_default_prompts_too_long_for_the_tiny_context_fail_cleanly(server_url: str, tmp_path: Path) -> None:
    inp = write_inputs(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    assert main(["transform", "--input", str(inp), "--output", str(out), "--base-url", server_url, "--model",
                 MODEL_ID, "-n", "2", "--max-tokens", "4", "--no-progress", "--backoff", "0.05"]) == 0
    recs = check_all_serial(out)
    s = json.loads(Path(f"{out}.summary.json").read_text())
    # HTTP 400 (context length exceeded) is not retried: one attempt per request, each given up.
    assert s["failures"] == {"http_error": 2 * len(ANSWERS), "request_failed": 2 * len(ANSWERS)}
    assert all("context length" in e for r in recs for e in r["stats"]["errors"][:1])


class _Fixed:
    name = "fixed"

    async def rewrite(self, sample: Sample, n: int) -> list[Candidate]:
        lines = sample.answer.split("\n")
        heads = [split_head(line) for line in lines]  # list items keep their marker in a head title
        body = "\n".join(f'<branch title="{h}">{line[len(h):]}</branch>' if h else f'<branch title="L{i}">{line}</branch>'
                         for i, (h, line) in enumerate(zip(heads, lines, strict=True)))
        return [to_candidate(f"PARALLEL: yes\n<<<ANSWER\n<branchgroup>\n{body}\n</branchgroup>\nANSWER>>>",
                             self.name, sample.answer)] * n


def test_judge_votes_over_real_http(server_url: str, tmp_path: Path) -> None:
    """Valid candidates, judged by the random model: its votes are unparseable, so every group is reverted
    and the originals are kept; the votes and their raw replies are in the output."""
    from dataclasses import replace

    from aspd.pipeline.prompts import DEFAULT_PROMPTS

    inp = write_inputs(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    judge = OpenAICompatBackend(server_url, MODEL_ID, prompts=replace(DEFAULT_PROMPTS, **SHORT_PROMPTS),
                                judge_max_tokens=6, concurrency=4, timeout=60, backoff=0.05)
    cfg = RunConfig(StageConfig(n=1, k=3), workers=4, progress=False)
    s = asyncio.run(run_transform(inp, out, _Fixed(), judge, cfg, report=lambda _: None))
    recs = check_all_serial(out)
    multi = [r for r in recs if "\n" in r["answer"]]  # one-line answers cannot form a group
    assert s["acceptance"]["passed_checks"] == len(multi) and s["acceptance"]["passed_independence"] == 0
    assert s["llm"]["calls"] == 3 * len(multi) and s["llm"]["completion_tokens"] == 6 * 3 * len(multi)
    for r in multi:
        votes = r["candidates"][0]["independence"]["groups"][0]["votes"]
        assert len(votes) == 3 and all(v["verdict"] is None and v["raw"] for v in votes)
        assert r["candidates"][0]["drop"] == "independence"
