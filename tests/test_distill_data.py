"""The self-distilled data shipped in data/distill/: the joined files are usable `aspd transform` input."""

from __future__ import annotations

import gzip
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from aspd.cli import main
from aspd.pipeline.runner import read_samples

ROOT = Path(__file__).resolve().parents[1]
DISTILL = ROOT / "data" / "distill"
JOIN = ROOT / "scripts" / "recipe" / "join_answers.py"
PROMPTS = ROOT.parent / "shared" / "data" / "prompts" / "train_prompts.jsonl"  # present in the project checkout
MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b")


def _plain(name: str, tmp_path: Path) -> Path:
    out = tmp_path / f"{name}.jsonl"
    out.write_bytes(gzip.decompress((DISTILL / f"joined_{name}.jsonl.gz").read_bytes()))
    return out


@pytest.mark.parametrize("name", MODELS)
def test_joined_files_are_transform_input_with_shippable_prompts_only(name, tmp_path):
    got = read_samples(_plain(name, tmp_path), strict=True)  # strict: any unusable line fails
    assert len(got.samples) == 2881 and got.bad_lines == 0
    allowed = runpy.run_path(str(JOIN))["REDISTRIBUTABLE"]
    assert {s.record["source"] for s in got.samples} <= allowed
    with gzip.open(DISTILL / f"answers_{name}.jsonl.gz", "rt", encoding="utf-8") as f:
        answers = {r["id"]: r["answer"] for r in map(json.loads, f)}
    assert all(s.answer == answers[s.id] and s.messages[-1]["content"] for s in got.samples)


def test_transform_runs_on_a_joined_file(tmp_path, capsys):
    """The README's step: a few samples through the rule-based rewriter (no model, no endpoint)."""
    out = tmp_path / "marked.jsonl"
    argv = ["transform", "--input", str(_plain("smollm2-135m", tmp_path)), "--output", str(out),
            "--rewriter", "rules", "--limit", "5", "--no-progress", "--strict"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and all(r["markup"] and r["prompt"] for r in rows)


@pytest.mark.skipif(not PROMPTS.is_file(), reason="the prompt file is only in the project checkout")
@pytest.mark.parametrize("name", MODELS)
def test_joined_files_are_what_the_join_command_makes(name, tmp_path):
    out = tmp_path / f"joined_{name}.jsonl.gz"  # same base name: gzip stores it in the header
    subprocess.run([sys.executable, str(JOIN), str(DISTILL / f"answers_{name}.jsonl.gz"), str(PROMPTS), str(out),
                    "--redistributable"], check=True, capture_output=True)
    assert out.read_bytes() == (DISTILL / f"joined_{name}.jsonl.gz").read_bytes()
