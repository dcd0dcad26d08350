"""PASTA decoding in the engine, on tiny random models: async spans isolated, cache = one-shot forward, nesting."""

import runpy
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig

from aspd.attention import layer_windows, mask_dtype, model_mask
from aspd.engine import HybridEngine, Limits
from aspd.pasta.sync import SyncTracker
from aspd.pasta.tokens import add_pasta_tokens
from aspd.testing import ARCHS, tiny_model, tiny_tokenizer
from aspd.tokens import add_control_tokens, text_ids

PROMPT = "List two things."


def setup(arch: str = "llama", engine: str = "eager"):
    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok))
    add_control_tokens(tok, model)
    tags = add_pasta_tokens(tok, model)  # rows at the mean: the random model never picks a tag itself
    return model, tok, tags, HybridEngine(model, tok, engine=engine)


def forced(tok, tags, eng, *parts) -> list[int]:
    """Main-stream tokens: str parts are text, ints are tag ids; ends with an end-of-turn id."""
    out: list[int] = []
    for p in parts:
        out += text_ids(tok, p) if isinstance(p, str) else [p]
    return [*out, min(eng.eot)]


def fork_body(gen, stream: int) -> list[int]:
    return [t for t, _p, s, _b in gen.slots if s == stream]


@pytest.mark.parametrize("arch", ARCHS)
def test_async_span_equals_serial_decode_of_its_synchronous_prefix(arch):
    model, tok, tags, eng = setup(arch)
    cap = 9
    prefix = forced(tok, tags, eng, tags.scope, "First:", tags.promise, " and second:", tags.promise, " end",
                    tags.scope_end)
    g = eng.generate(PROMPT, mode="pasta", answer_prefix=prefix, record=True,
                     limits=Limits(max_new_tokens=80, max_branch_tokens=cap))
    assert g.finish_reason == "stop" and g.stats.groups == 1 and g.stats.branches == [2]
    prompt = eng.prompt_ids(PROMPT)
    main = prefix[:-1]
    for stream, upto in ((1, main.index(tags.promise) + 1), (2, len(main) - main[::-1].index(tags.promise))):
        span = fork_body(g, stream)
        assert span[0] == tags.async_ and span[-1] == tags.async_end and len(span) == cap
        body = span[1:-1]  # the cap forced </async>
        context = prompt + main[:upto] + [tags.async_]
        cfg = GenerationConfig(do_sample=False, max_new_tokens=len(body), min_new_tokens=len(body),
                               eos_token_id=None, pad_token_id=0)
        with torch.no_grad():
            out = model.generate(torch.tensor([context]), generation_config=cfg)
        assert out[0, len(context):].tolist() == body, (arch, stream)
    # The answer splices each span's text in place of its promise; the markup keeps the training form.
    assert g.markup.count("<promise/><async>") == 2 and g.markup.count("</async>") == 2
    assert "<" not in g.text.replace("<unk>", "")


@pytest.mark.parametrize("engine", ["eager", "fast"])
def test_cache_steps_equal_one_shot_forward_with_tracker_masks(engine):
    """Every recorded step's logits == a one-shot forward of all fed tokens under the tracker's rows."""
    model, tok, tags, eng = setup("llama", engine)
    prefix = forced(tok, tags, eng, tags.scope, "A:", tags.promise, " B:", tags.promise, tags.scope_end, " ok")
    g = eng.generate(PROMPT, mode="pasta", answer_prefix=prefix, record=True,
                     limits=Limits(max_new_tokens=60, max_branch_tokens=6))
    t = SyncTracker()
    tag_of = {v: k for k, v in zip(("SCOPE", "SCOPE_END", "ASYNC", "ASYNC_END", "PROMISE"), tags.all(), strict=True)}
    from aspd.pasta.sync import Tag

    rows, pos = [], []
    for tid, p, stream, _ in g.slots:
        fed = t.feed(stream, Tag[tag_of[tid]] if tid in tag_of else None)
        assert fed.position == p
        rows.append(t.row(stream))
    n = len(rows)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i, r in enumerate(rows):
        allowed[i, : r.size] = torch.from_numpy(r)
        pos.append(g.slots[i][1])
    ids = torch.tensor([[s[0] for s in g.slots]])
    mask = model_mask(layer_windows(model.config), lambda w: allowed, mask_dtype(model))
    with torch.no_grad():
        ref = model(input_ids=ids, position_ids=torch.tensor([pos]), attention_mask=mask).logits[0]
    assert (torch.stack(g.logits) - ref).abs().max().item() < 1e-4


def test_nested_scopes_wait_and_splice_in_order():
    model, tok, tags, eng = setup()
    prefix = forced(tok, tags, eng, tags.scope, "x", tags.promise, "y", tags.scope, "z", tags.promise, "w",
                    tags.scope_end, tags.scope_end, " fin")
    g = eng.generate(PROMPT, mode="pasta", answer_prefix=prefix, limits=Limits(max_new_tokens=80, max_branch_tokens=5))
    m = g.markup
    assert m.index("x<promise/><async>") < m.index("</async>y<scope>z<promise/><async>") < m.index("</async>w</scope>")
    assert m.rstrip().endswith("</scope></scope> fin") and g.stats.branches == [1, 1]
    assert scope_forks(m) == [1, 1]
    # The visible answer is the markup with its tags removed.
    plain = m
    for tag in ("<scope>", "</scope>", "<async>", "</async>", "<promise/>"):
        plain = plain.replace(tag, "")
    assert g.text == plain.strip()
    assert 0 < g.stats.dp < 1 and g.stats.parallel_tokens == 2 * 4  # two spans of 4 sampled tokens


def test_a_scope_cut_by_the_length_limit_counts_as_a_group():
    """Its spans decoded in parallel: the answer went parallel even though `</scope>` never came."""
    model, tok, tags, eng = setup()
    prefix = [tags.scope, *text_ids(tok, "A:"), tags.promise, *text_ids(tok, " B:"), tags.promise]
    g = eng.generate(PROMPT, mode="pasta", answer_prefix=prefix, limits=Limits(max_new_tokens=14, max_branch_tokens=9))
    assert g.finish_reason == "length" and "</scope>" not in g.markup
    assert g.stats.parallel_tokens > 0 and g.stats.branches == [2] and g.stats.groups == 1
    assert scope_forks(g.markup) == [2]  # the recount of committed bench rows agrees with the engine


def scope_forks(markup: str) -> list[int]:
    script = Path(__file__).parents[1] / "scripts" / "recipe" / "recount_pasta_groups.py"
    return runpy.run_path(str(script))["scope_forks"](markup)


def test_fast_engine_gives_the_eager_tokens():
    model, tok, tags, eager = setup()
    fast = HybridEngine(model, tok, engine="fast")
    prefix = forced(tok, tags, eager, tags.scope, "A:", tags.promise, " B:", tags.promise, tags.scope_end)
    lim = Limits(max_new_tokens=50, max_branch_tokens=7)
    a = eager.generate(PROMPT, mode="pasta", answer_prefix=prefix, limits=lim)
    b = fast.generate(PROMPT, mode="pasta", answer_prefix=prefix, limits=lim)
    assert a.markup == b.markup and a.answer_ids == b.answer_ids


def test_a_model_without_tags_is_refused_clearly():
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    add_control_tokens(tok, model)
    with pytest.raises(ValueError, match="PASTA tags"):
        HybridEngine(model, tok).generate(PROMPT, mode="pasta")
