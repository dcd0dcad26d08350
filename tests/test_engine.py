"""Engine correctness on tiny random models of each architecture: consistency, isolation, serial = generate."""

import itertools

import pytest
import torch
from transformers import GenerationConfig

from aspd.attention import forward_layout, layer_windows, mask_dtype, model_mask
from aspd.engine import HybridEngine, Limits, SamplingParams
from aspd.engine.kv import cache_kwargs
from aspd.layout import Kind, Span, build_layout, visibility
from aspd.markup import parse, render
from aspd.testing import ARCHS, tiny_model, tiny_tokenizer
from aspd.tokens import add_control_tokens, branch_prefix_ids, text_ids

POS_MODES = ("same-seq", "same-max", "same-re", "predict")
MASK_MODES = ("indep", "shared")


def setup(arch: str, attn: str = "sdpa"):
    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok), attn=attn)
    ctrl = add_control_tokens(tok, model)  # control rows at the mean: a random model never picks them
    return model, tok, ctrl


def forced_titles(tok, ctrl, titles) -> list[int]:
    out = []
    for t in titles:
        out += [ctrl.title, *text_ids(tok, t), ctrl.title_end]
    return [*out, ctrl.para]


def run(eng, tok, ctrl, titles=("Diet", "Sleep", "Work"), cap=9, new=40, **kw):
    return eng.generate("Give tips.", answer_prefix=forced_titles(tok, ctrl, titles),
                        limits=Limits(max_new_tokens=new, max_branch_tokens=cap), record=True, **kw)


def one_shot(model, ids, pos, grp, br, mode) -> torch.Tensor:
    t = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    ids, pos, grp, br = t(ids), t(pos), t(grp), t(br)
    order = torch.arange(len(ids))
    mask = model_mask(layer_windows(model.config),
                      lambda w: visibility(grp, br, order, grp, br, order, mode, q_pos=pos, k_pos=pos, window=w),
                      mask_dtype(model))
    with torch.no_grad():
        return model(input_ids=ids[None], position_ids=pos[None], attention_mask=mask, use_cache=False).logits[0]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mask_mode,pos_mode", list(itertools.product(MASK_MODES, POS_MODES)))
def test_engine_logits_equal_one_shot_forward(arch, mask_mode, pos_mode):
    """Every slot's logits, as the engine computed them step by step, equal one forward over the same slots."""
    model, tok, ctrl = setup(arch)
    eng = HybridEngine(model, tok, mask_mode=mask_mode, pos_mode=pos_mode, predicted_length=2, predict_scale=2)
    g = run(eng, tok, ctrl)
    assert g.stats.groups == 1 and g.stats.branches == [3]
    ids, pos, grp, br = map(list, zip(*g.slots, strict=True))
    n = len(ids)
    if pos_mode == "same-re":
        # After the group closes its keys are re-rotated; a single forward can only mirror what came before.
        n = ids.index(ctrl.para_end)
    ref = one_shot(model, ids[:n], pos[:n], grp[:n], br[:n], mask_mode)
    got = torch.stack(g.logits[:n])
    assert (ref - got).abs().max().item() < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pos_mode", ("same-seq", "same-max", "predict"))
def test_engine_logits_equal_training_layout(arch, pos_mode):
    """The engine's interleaved decode equals the flattened training layout of the same answer (indep)."""
    model, tok, ctrl = setup(arch)
    eng = HybridEngine(model, tok, pos_mode=pos_mode, predicted_length=3, predict_scale=2)
    g = run(eng, tok, ctrl, titles=("Diet", "Sleep"), cap=7)
    # Rebuild the flattened sample from the slots: main tokens in order, each group's branches one after another.
    spans: list[Span] = []
    flat_of_slot: list[int] = []
    group: dict[tuple[int, int], list[int]] = {}  # (group, branch) -> slots, for the open group

    def flush():
        for (gr, b), slots in sorted(group.items()):
            spans.append(Span(Kind.BODY, [g.slots[s][0] for s in slots], gr, b))
            flat_of_slot.extend(slots)
        group.clear()

    for s, (tid, _pos, gr, b) in enumerate(g.slots):
        if gr == -1:
            flush()
            spans.append(Span(Kind.SERIAL, [tid]))
            flat_of_slot.append(s)
        else:
            group.setdefault((gr, b), []).append(s)
    flush()
    lay = build_layout(spans, pos_mode=pos_mode, predicted_lengths=[[3, 3]], predict_scale=2)
    with torch.no_grad():
        ref = forward_layout(model, lay)
    got = torch.stack(g.logits)[flat_of_slot]
    assert lay.position_ids.tolist() == [g.slots[s][1] for s in flat_of_slot]
    assert (ref - got).abs().max().item() < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_branch_equals_serial_decode_of_its_prefix(arch):
    """Isolation: greedy branch i == plain greedy decode of prefix + <|branch|>T_i:, and siblings don't matter."""
    model, tok, ctrl = setup(arch)
    eng = HybridEngine(model, tok)
    cap = 10
    g = run(eng, tok, ctrl, titles=("Diet", "Sleep", "Work"), cap=cap, new=60)
    answer = g.answer_ids
    para = answer.index(ctrl.para)
    context = eng.prompt_ids("Give tips.") + answer[: para + 1]
    for b, title in enumerate(("Diet", "Sleep", "Work")):
        prefix = [ctrl.branch, *text_ids(tok, f"{title}:")]
        body = [tid for tid, _p, gr, br in g.slots if gr == 0 and br == b][len(prefix):]
        body = body[:-1]  # drop the cap-forced <|/branch|>
        cfg = GenerationConfig(do_sample=False, max_new_tokens=len(body), min_new_tokens=len(body),
                               eos_token_id=None, pad_token_id=0)
        with torch.no_grad():
            out = model.generate(torch.tensor([context + prefix]), generation_config=cfg)
        assert out[0, len(context) + len(prefix):].tolist() == body, (arch, b)
    # The announced titles sit in the main stream, which every branch reads; what must stay invisible is the
    # sibling branches themselves. The reference above contains no sibling token at all, so equality proves it.
    # Changing a sibling's title therefore changes branch 0 only through the main stream, never through the
    # sibling's own prefix: with the titles' main-stream text held fixed, the sibling prefix is irrelevant.
    eng2 = HybridEngine(model, tok)
    g2 = eng2.generate("Give tips.", answer_prefix=forced_titles(tok, ctrl, ("Diet", "Sleep", "Work")),
                       limits=Limits(max_new_tokens=60, max_branches=2, max_branch_tokens=cap), record=True)
    first = lambda gen: [t for t, _p, gr, br in gen.slots if gr == 0 and br == 0]  # noqa: E731
    assert first(g) == first(g2)  # dropping the third branch altogether leaves branch 0 as it was


@pytest.mark.parametrize("arch", ARCHS)
def test_serial_mode_equals_hf_generate(arch):
    model, tok, _ = setup(arch)
    eng = HybridEngine(model, tok)
    n = 24
    g = eng.generate("Give three tips for staying healthy.", mode="serial", limits=Limits(max_new_tokens=n))
    prompt = eng.prompt_ids("Give three tips for staying healthy.")
    cfg = GenerationConfig(do_sample=False, max_new_tokens=n, eos_token_id=sorted(eng.eot), pad_token_id=0)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), generation_config=cfg)[0, len(prompt):].tolist()
    assert g.answer_ids == out


@pytest.mark.parametrize("engine", ["eager", "fast"])
def test_the_cache_goes_by_the_keyword_the_model_takes(engine):
    """transformers 5.24 takes the cache as `cache` and deprecates `past_key_values` (to go in 5.40); 5.17 only
    has `past_key_values`. Every forward of the engine passes exactly the one the model's forward declares."""
    import inspect

    model, tok, ctrl = setup("llama")
    want = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    seen: list[set[str]] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append({k for k in ("cache", "past_key_values") if k in kw}), with_kwargs=True)
    try:
        run(HybridEngine(model, tok, engine=engine), tok, ctrl, titles=("Diet", "Sleep"), new=20)
    finally:
        hook.remove()
    assert seen and all(s == {want} for s in seen)


def test_eager_attention_matches_sdpa():
    m1, tok, ctrl = setup("llama", attn="sdpa")
    m2, _, _ = setup("llama", attn="eager")
    g1 = run(HybridEngine(m1, tok), tok, ctrl)
    g2 = run(HybridEngine(m2, tok), tok, ctrl)
    assert g1.answer_ids == g2.answer_ids
    assert (torch.stack(g1.logits) - torch.stack(g2.logits)).abs().max() < 1e-4


def test_same_re_rerotation_moves_keys_exactly():
    """Layer-0 keys depend only on the token and its position, so re-rotated keys must equal fresh ones."""
    from transformers import DynamicCache

    from aspd.engine.rope import rerotate_keys

    for arch in ARCHS:
        model, tok, _ = setup(arch)
        ids = torch.tensor([text_ids(tok, "Eat a balanced diet and sleep well every day.")])
        n = ids.shape[1]
        old, new = torch.arange(n), torch.arange(n) + 7
        c1, c2 = DynamicCache(), DynamicCache()
        with torch.no_grad():
            model(input_ids=ids, position_ids=old[None], **cache_kwargs(model, c1))
            model(input_ids=ids, position_ids=new[None], **cache_kwargs(model, c2))
        rerotate_keys(model, c1, torch.arange(n), old, new)
        assert (c1.layers[0].keys - c2.layers[0].keys).abs().max() < 1e-4, arch


def test_sampling_is_reproducible_per_seed():
    model, tok, ctrl = setup("qwen2")
    eng = HybridEngine(model, tok)
    sp = SamplingParams(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.1, seed=3)
    a = run(eng, tok, ctrl, sampling=sp)
    b = run(eng, tok, ctrl, sampling=sp)
    c = run(eng, tok, ctrl, sampling=SamplingParams(temperature=0.7, top_k=20, top_p=0.8, seed=4))
    assert a.answer_ids == b.answer_ids
    assert a.answer_ids != c.answer_ids


def test_head_titles_are_fed_as_prefixes_and_shown_before_their_bodies():
    """A head title (`1. **Diet**:`) is the branch's prefix as is (no ':' added) and the start of its visible text."""
    model, tok, ctrl = setup("llama")
    eng = HybridEngine(model, tok)
    heads = ("1. **Diet**:", "2. **Sleep**:", "- Work")
    g = run(eng, tok, ctrl, titles=heads, cap=16, new=70)  # the heads' prefixes take 7 to 12 of each cap
    assert g.doc.groups and g.doc.groups[0].titles == heads
    for b, head in enumerate(heads):
        fed = [t for t, _p, gr, br in g.slots if gr == 0 and br == b]
        assert fed[: 1 + len(text_ids(tok, head))] == [ctrl.branch, *text_ids(tok, head)]
        assert branch_prefix_ids(tok, ctrl, head) == [ctrl.branch, *text_ids(tok, head)]
    assert [b.visible.startswith(h) for b, h in zip(g.doc.groups[0].branches, heads, strict=True)] == [True] * 3
    assert all(h in g.text for h in heads)
    assert parse(render(g.doc)) == g.doc.normalized()
    # A label title is hidden and fed with ':' appended, as before.
    assert branch_prefix_ids(tok, ctrl, "Diet") == [ctrl.branch, *text_ids(tok, "Diet:")]


@pytest.mark.parametrize("seed", range(6))
def test_reading_order_view_reassembles_the_visible_text(seed):
    from aspd.engine.stream import ReadingOrderView, stream_events

    model, tok, ctrl = setup("llama")
    eng = HybridEngine(model, tok)
    # Two groups, sampled: branches end at different times, so the view must buffer and release in order.
    titles = ("Diet", "Sleep", "Work") if seed % 2 else ("1. Diet", "2. **Sleep**:", "3. Work:")  # labels, heads
    pre = forced_titles(tok, ctrl, titles)
    view = ReadingOrderView(eng)
    shown, order = "", []
    gen = None
    for item in stream_events(eng, "Give tips.", answer_prefix=pre, sampling=SamplingParams(temperature=1.0, seed=seed),
                              limits=Limits(max_new_tokens=80, max_branch_tokens=13 + seed)):
        if hasattr(item, "kind"):
            shown += view.push(item)
            if item.kind == "token" and item.stream != (-1, -1):
                order.append(item.stream[1])
        else:
            gen = item
    assert gen is not None and shown == gen.text
    assert len(set(order)) == 3  # all branches really streamed


def test_stream_can_be_abandoned_midway():
    from aspd.engine.stream import stream_events

    model, tok, _ = setup("llama")
    eng = HybridEngine(model, tok)
    it = stream_events(eng, "Give tips.", limits=Limits(max_new_tokens=500))
    first = [next(it) for _ in range(3)]
    it.close()  # stops the worker at its next token instead of running to 500
    assert all(e.kind == "token" for e in first)
    assert eng.generate("Give tips.", limits=Limits(max_new_tokens=5)).stats.tokens == 5


def test_generation_stops_at_the_context_and_never_opens_a_group_that_cannot_fit():
    model, tok, ctrl = setup("llama")
    model.config.max_position_embeddings = 64
    eng = HybridEngine(model, tok)
    g = eng.generate("Give tips.", limits=Limits(max_new_tokens=500), record=True)
    assert g.finish_reason == "length" and max(p for _, p, _, _ in g.slots) < 64
    # Titles forced near the end: three branches of 20 tokens cannot fit, so <|para|> stays plain text.
    filler = text_ids(tok, " habits matter") * 3
    g = eng.generate("Give tips.", answer_prefix=filler + forced_titles(tok, ctrl, ("A", "B", "C")),
                     limits=Limits(max_new_tokens=500, max_branch_tokens=20), record=True)
    assert g.stats.groups == 0 and max(p for _, p, _, _ in g.slots) < 64


def test_titles_with_line_breaks_become_one_line():
    model, tok, ctrl = setup("llama")
    eng = HybridEngine(model, tok)
    pre = [ctrl.title, *text_ids(tok, "A\nB"), ctrl.title_end, ctrl.title, *text_ids(tok, "C"), ctrl.title_end,
           ctrl.para]
    g = eng.generate("Give tips.", answer_prefix=pre, limits=Limits(max_new_tokens=30, max_branch_tokens=6))
    assert [b.title for b in g.doc.groups[0].branches] == ["A B", "C"]
    render(g.doc)


@pytest.mark.parametrize("extra", [1, 2, 3, 4, 5, 7, 9])
def test_budget_ending_inside_a_group_is_not_overshot(extra):
    """Each live branch owes an end token: a budget that runs out mid-group still bounds the sampled count."""
    model, tok, ctrl = setup("llama")
    eng = HybridEngine(model, tok)
    titles = ("A", "B", "C", "D")
    new = len(forced_titles(tok, ctrl, titles)) + extra  # the forced titles count against the budget too
    g = run(eng, tok, ctrl, titles=titles, cap=50, new=new)
    assert g.stats.groups == (1 if extra >= len(titles) else 0)  # no group opens without budget for its ends
    assert g.stats.tokens <= new
    render(g.doc)


def test_detokenizer_deltas_add_up_to_the_decode_and_hold_split_characters():
    from aspd.engine.text import Detokenizer

    tok = tiny_tokenizer()
    add_control_tokens(tok, tiny_model("llama", len(tok)))
    ids = tok("Zürich: 日本 🎉<|para|> café, ok", add_special_tokens=False)["input_ids"]
    d = Detokenizer(tok)
    deltas = [d.push(t) for t in ids]
    assert "".join(deltas) + d.flush() == tok.decode(ids)
    assert not any("\ufffd" in x for x in deltas) and deltas.count("") > 0  # some characters span tokens
    cut = tok("🎉", add_special_tokens=False)["input_ids"][:-1]  # an emoji missing its last byte
    d = Detokenizer(tok)
    assert [d.push(t) for t in cut] == [""] * len(cut) and d.flush() == tok.decode(cut)
