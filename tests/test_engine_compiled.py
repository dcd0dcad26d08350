"""The compiled decode step (`aspd.engine.compiled`) against the eager engine, on CPU with inductor.

On CPU `compile=True` runs what CUDA replays minus the graphs: steps padded to buckets, keys read over the whole
capacity, the step (cache write, mask from the slot tables, model forward) compiled. fp32 greedy decoding must give
the eager engine's tokens and, on every slot both fed, its logits. Compiling costs tens of seconds per tiny model on
a small machine, so each architecture compiles once and decodes serially and with a group in the same engine.
"""

import pytest
import torch

from aspd.engine import HybridEngine, Limits
from aspd.engine.kv import BUCKETS
from aspd.testing import tiny_model, tiny_tokenizer
from aspd.tokens import add_control_tokens, text_ids

PROMPT = "Give three tips for staying healthy."


def three_branches(tok, ctrl) -> list[int]:
    """An answer prefix that opens a group of three titled branches."""
    forced = []
    for t in ("Diet", "Sleep", "Work"):
        forced += [ctrl.title, *text_ids(tok, t), ctrl.title_end]
    return [*forced, ctrl.para]


def same(a, b) -> None:
    assert a.answer_ids == b.answer_ids
    assert a.slots == b.slots
    assert (torch.stack(a.logits) - torch.stack(b.logits)).abs().max().item() < 1e-4


def same_group_answer(eager: HybridEngine, fast: HybridEngine, tok, ctrl) -> None:
    """A forced group of three branches: the fast engine's tokens and logits are the eager engine's."""
    forced = three_branches(tok, ctrl)
    lim = Limits(max_new_tokens=40, max_branch_tokens=9)
    ref = eager.generate(PROMPT, answer_prefix=forced, limits=lim, record=True)
    assert ref.stats.branches == [3]
    same(ref, fast.generate(PROMPT, answer_prefix=forced, limits=lim, record=True))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_compiled_step_equals_eager_serial_and_with_groups(arch, one_thread):
    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok))
    ctrl = add_control_tokens(tok, model)
    eager = HybridEngine(model, tok, engine="eager")
    comp = HybridEngine(model, tok, engine="fast", compile=True)
    # Every bucket compiled before the first answer, and nothing compiled while answering (no stall in an answer).
    assert set(comp.warm(2048)) == {f"{b}{s}" for b in BUCKETS for s in ("", "@1024")}  # whole cache, 1,024
    compiled_before = set(comp._static.compiled.seconds)

    lim = Limits(max_new_tokens=24)
    same(eager.generate(PROMPT, mode="serial", limits=lim, record=True),
         comp.generate(PROMPT, mode="serial", limits=lim, record=True))

    same_group_answer(eager, comp, tok, ctrl)

    step = comp._static.compiled
    assert step is not None and step.error is None, step and step.error  # no silent fall back to the eager step
    shapes = {int(k.split("x")[0]) for k in step.seconds}
    assert 1 in shapes and {4} <= shapes  # the serial step and a lockstep step of 3 branches ran compiled
    assert set(step.seconds) == compiled_before and comp._static.capacity >= 2048


@pytest.mark.slow
def test_static_shapes_compile_one_graph_per_bucket_with_the_eager_answers(monkeypatch, one_thread):
    """ASPD_COMPILE_SHAPES=static: each bucket its own static graph (a cold compile for every new bucket), the same
    tokens and logits as the eager engine."""
    import torch._dynamo

    monkeypatch.setenv("ASPD_COMPILE_SHAPES", "static")
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    ctrl = add_control_tokens(tok, model)
    eager = HybridEngine(model, tok, engine="eager")
    comp = HybridEngine(model, tok, engine="fast", compile=True)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    same_group_answer(eager, comp, tok, ctrl)
    step = comp._static.compiled
    assert step is not None and step.error is None and step.shapes == "static"
    # One graph per step shape met (the dynamic default would have made two for all of them).
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == len(step.seconds) >= 3


def test_compile_defaults_to_cuda_only_and_bad_mode_is_refused(monkeypatch):
    from aspd.engine.compiled import compile_mode, compile_shapes, decode_attention_on, resolve_compile

    assert resolve_compile(None, torch.device("cuda")) and not resolve_compile(None, torch.device("cpu"))
    assert resolve_compile(True, torch.device("cpu")) and not resolve_compile(False, torch.device("cuda"))
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    add_control_tokens(tok, model)
    eng = HybridEngine(model, tok, engine="fast")
    eng.generate("Hi", limits=Limits(max_new_tokens=2))
    assert eng._static.compiled is None and not eng._static.bucketed  # CPU default: today's path
    monkeypatch.setenv("ASPD_COMPILE", "1")
    assert resolve_compile(None, torch.device("cpu")) and not resolve_compile(False, torch.device("cpu"))
    monkeypatch.setenv("ASPD_COMPILE", "yes")
    with pytest.raises(ValueError, match="ASPD_COMPILE must be 0 or 1"):
        resolve_compile(None, torch.device("cpu"))
    monkeypatch.setenv("ASPD_COMPILE_MODE", "turbo")
    with pytest.raises(ValueError, match="ASPD_COMPILE_MODE must be one of"):
        compile_mode()
    assert compile_shapes() == "dynamic"
    monkeypatch.setenv("ASPD_COMPILE_SHAPES", "fixed")
    with pytest.raises(ValueError, match="ASPD_COMPILE_SHAPES must be one of"):
        compile_shapes()
    assert decode_attention_on()
    monkeypatch.setenv("ASPD_DECODE_ATTENTION", "0")
    assert not decode_attention_on()
    monkeypatch.setenv("ASPD_DECODE_ATTENTION", "off")
    with pytest.raises(ValueError, match="ASPD_DECODE_ATTENTION must be 0 or 1"):
        decode_attention_on()


def test_a_step_that_cannot_compile_falls_back_to_eager_with_a_warning():
    """A backend error surfaces at the first call: the step warns once and goes on eagerly, with the same result."""
    from aspd.engine.compiled import CompiledStep

    def refuse(gm, example_inputs):
        raise RuntimeError("this backend compiles nothing")

    def step(inputs, span, rows=None):
        return inputs[:, :span].float() * 2

    cs = CompiledStep(step, backend=refuse)
    x = torch.arange(10).reshape(5, 2)
    with pytest.warns(RuntimeWarning, match="compiles nothing"):
        out = cs(x, 2)
    assert torch.equal(out, x.float() * 2) and not cs.active
    assert torch.equal(cs(x, 1), x[:, :1].float() * 2)  # eager from then on, no second warning


@pytest.mark.slow
@pytest.mark.parametrize("arch,compile", [("qwen2", True), ("gemma3", False), ("llama", False)])
def test_decode_attention_gives_the_sdpa_engine_answers(arch, compile, one_thread):
    """The attention the fast engine switches to where it compiles on CUDA (`aspd.attention.decode_attention`,
    matrix products for steps of 2-64 rows): the same tokens and logits as the eager engine on plain SDPA, with a
    group, compiled (inductor) and not; Gemma 3 takes a mask per layer type."""
    from aspd.attention import use_decode_attention

    tok = tiny_tokenizer()
    plain, model = tiny_model(arch, len(tok)), tiny_model(arch, len(tok))
    add_control_tokens(tok, plain)
    ctrl = add_control_tokens(tok, model)
    assert use_decode_attention(model)
    eager = HybridEngine(plain, tok, engine="eager")
    fast = HybridEngine(model, tok, engine="fast", compile=compile)
    same_group_answer(eager, fast, tok, ctrl)
    assert model.config._attn_implementation == "aspd_sdpa"
    assert not compile or fast._static.compiled.error is None  # no silent fall back to the eager step


@pytest.mark.slow
def test_the_first_multi_row_step_compiles_the_dynamic_graph_whatever_its_size(one_thread):
    """A first step of 64 rows (a prompt's prefill) compiles the graph that is dynamic in the step's size, not a
    static one of its own: on `decode_attention`, the one-row graph, one for 2-64 rows and one beyond (SDPA
    again), so three graphs whatever order the buckets come in (four when the first was left static)."""
    import torch._dynamo

    from aspd.attention import use_decode_attention

    tok = tiny_tokenizer()
    model = tiny_model("qwen2", len(tok))
    add_control_tokens(tok, model)
    assert use_decode_attention(model)
    kv = HybridEngine(model, tok, engine="fast", compile=True).static_kv()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        kv._step(kv._inputs([], [], 1), kv.capacity)  # the cache allocates its buffers eagerly, as warm() does
        for size in (64, 1, 16, 2, 32, 128, 256):
            kv._bucket_step(kv._inputs([], [], size), kv.capacity)
    assert kv.compiled.error is None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 3
