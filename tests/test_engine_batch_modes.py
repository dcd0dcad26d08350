"""Every decoding mode is stepped: SoT and PASTA requests batched beside hybrid and serial ones (continuous
batching, aspd.engine.batch) answer as they do alone, and nothing one request does is visible to another."""

from __future__ import annotations

import copy

import pytest
import torch
from test_engine_batch import alone, batched, forced, same

from aspd.engine import HybridEngine, Limits
from aspd.engine.kv import StaticKV
from aspd.engine.sot import generate_sot
from aspd.pasta.tokens import add_pasta_tokens
from aspd.sample import end_of_turn_ids
from aspd.testing import tiny_model, tiny_tokenizer
from aspd.tokens import add_control_tokens, text_ids

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Give tips."}]


def plain_engine(arch: str = "llama", *, tie: bool = False, bucketed: bool = False) -> HybridEngine:
    """A model never trained on the control tokens (SoT then reads them as text), whose end of turn is never
    likely, so that branches run to their caps (a random model would end anywhere)."""
    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok), tie=tie)
    ctrl = add_control_tokens(tok, model)
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[end_of_turn_ids(tok)[0]] = head[: ctrl.title].mean(0)
    eng = HybridEngine(model, tok, engine="fast")
    eng.is_aspd_model = False  # as from_pretrained marks a plain model
    eng._static = StaticKV(eng, capacity=64, bucketed=bucketed)  # small: it grows while requests run
    return eng


def skeleton(eng: HybridEngine, text: str) -> list[int]:
    return [*text_ids(eng.tokenizer, text), end_of_turn_ids(eng.tokenizer)[0]]


def sot_specs(eng: HybridEngine) -> list[dict]:
    """SoT with a forced outline (a group), SoT with the model's own (random) outline, hybrid with a forced group
    (control tokens fed while SoT runs), serial."""
    return [
        dict(ids=[], messages=QUESTION, mode="sot", answer_prefix=skeleton(eng, "1. Diet\n2. Sleep\n3. Work\n"),
             limits=Limits(max_new_tokens=160, max_branch_tokens=8)),
        dict(ids=[], messages="Name two colours.", mode="sot", limits=Limits(max_new_tokens=40)),
        dict(ids=eng.prompt_ids("Give three tips."), mode="hybrid", answer_prefix=forced(eng),
             limits=Limits(max_new_tokens=30, max_branch_tokens=8)),
        dict(ids=eng.prompt_ids("Hi"), mode="serial", limits=Limits(max_new_tokens=12)),
    ]


def alone_sot(eng: HybridEngine, spec: dict):
    if spec["mode"] != "sot":
        return alone(eng, {"sampling": None, **spec})
    return eng.generate(spec["messages"], mode="sot", limits=spec["limits"],
                        answer_prefix=spec.get("answer_prefix", ()), record=True)


@pytest.mark.parametrize("arch,tie,bucketed", [("llama", False, False), ("qwen2", True, True)])
def test_batched_sot_equals_alone(arch, tie, bucketed):
    eng = plain_engine(arch, tie=tie, bucketed=bucketed)
    specs = sot_specs(eng)
    refs = [alone_sot(eng, s) for s in specs]
    assert refs[0].stats.branches == [3]  # the forced outline opened a group
    got, batch, widest = batched(eng, specs, join_at=[0, 3, 6, 1])
    assert widest == 4
    for ref, g in zip(refs, got, strict=True):
        same(ref, g)
        assert (g.text, g.raw, g.stats.forwards) == (ref.text, ref.raw, ref.stats.forwards)
    kv = eng._static
    assert not kv.owned and kv.free_slots == kv.capacity - kv.headroom  # both stages gave their slots back


def test_sot_never_changes_the_shared_model():
    """While a SoT answer runs (both stages), the model's weights are as they were: another request in the
    batch sees the model it would see alone."""
    eng = plain_engine(tie=True)
    before = {k: v.clone() for k, v in eng.model.state_dict().items()}
    changed = []

    def check(_ev):
        changed.extend(k for k, v in eng.model.state_dict().items() if not torch.equal(v, before[k]))

    g = eng.generate(QUESTION, mode="sot", limits=Limits(max_new_tokens=80, max_branch_tokens=8),
                     answer_prefix=skeleton(eng, "1. Diet\n2. Sleep\n"), on_event=check)
    assert g.stats.branches == [2] and not changed


def test_sot_reads_control_tokens_as_borrowed_rows_would():
    """The per-request substitution gives what borrowing the line break's and end of turn's embedding rows (the
    old in-place swap) gives, tied head included: same tokens, same logits."""
    eng = plain_engine(tie=True)
    ref_model = copy.deepcopy(eng.model)
    c, emb = eng.ctrl, ref_model.get_input_embeddings().weight
    with torch.no_grad():
        emb[list(c.all())] = emb[text_ids(eng.tokenizer, "\n")[-1]].clone()
        emb[c.branch_end] = emb[min(eng.eot)].clone()
    ref_eng = HybridEngine(ref_model, eng.tokenizer, engine="fast")  # marked as trained: no substitution
    lim = Limits(max_new_tokens=80, max_branch_tokens=10)
    g = generate_sot(eng, QUESTION, limits=lim, skeleton=["Diet", "Sleep", "Work"], record=True)
    ref = generate_sot(ref_eng, QUESTION, limits=lim, skeleton=["Diet", "Sleep", "Work"], record=True)
    assert g.stats.branches == [3]
    same(ref, g)


def pasta_engine(arch: str, bucketed: bool) -> HybridEngine:
    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok))
    add_control_tokens(tok, model)
    add_pasta_tokens(tok, model)  # rows at the mean: the random model never picks a tag itself
    eng = HybridEngine(model, tok, engine="fast")
    eng._static = StaticKV(eng, capacity=64, bucketed=bucketed)
    return eng


def pasta_prefix(eng: HybridEngine, *parts) -> list[int]:
    """Main-stream tokens: str parts are text, ints are tag ids; ends with an end-of-turn id."""
    out: list[int] = []
    for p in parts:
        out += text_ids(eng.tokenizer, p) if isinstance(p, str) else [p]
    return [*out, min(eng.eot)]


@pytest.mark.parametrize("arch,bucketed", [("llama", False), ("gemma3", True)])
def test_batched_pasta_equals_alone(arch, bucketed):
    """Two PASTA requests (explicit rows, two of them in one forward) beside SoT, hybrid and serial ones."""
    eng = pasta_engine(arch, bucketed)
    tg = eng.pasta
    specs = [
        dict(ids=eng.prompt_ids("List two things."), mode="pasta", limits=Limits(max_new_tokens=60, max_branch_tokens=7),
             answer_prefix=pasta_prefix(eng, tg.scope, "A:", tg.promise, " B:", tg.promise, tg.scope_end, " ok")),
        dict(ids=eng.prompt_ids("Give three tips."), mode="hybrid", answer_prefix=forced(eng),
             limits=Limits(max_new_tokens=30, max_branch_tokens=8)),
        dict(ids=eng.prompt_ids("Two more?"), mode="pasta", limits=Limits(max_new_tokens=50, max_branch_tokens=5),
             answer_prefix=pasta_prefix(eng, "Sure:", tg.scope, tg.promise, tg.scope, tg.promise, tg.scope_end,
                                        tg.scope_end, "!")),
        dict(ids=[], messages="Give tips.", mode="sot", answer_prefix=skeleton(eng, "1. Diet\n2. Sleep\n"),
             limits=Limits(max_new_tokens=120, max_branch_tokens=9)),
        dict(ids=eng.prompt_ids("Hi"), mode="serial", limits=Limits(max_new_tokens=12)),
    ]
    refs = [alone_sot(eng, s) for s in specs]
    assert refs[0].stats.branches == [2] and refs[2].stats.groups == 2 and refs[3].stats.branches == [2]
    got, batch, widest = batched(eng, specs, join_at=[0, 2, 1, 4, 3])
    assert widest == 5
    for ref, g in zip(refs, got, strict=True):
        same(ref, g)
        assert (g.text, g.markup) == (ref.text, ref.markup)
    kv = eng._static
    assert not kv.owned and kv.free_slots == kv.capacity - kv.headroom
