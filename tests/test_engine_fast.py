"""The fast engine (preallocated cache, bucketed steps, batched sampling) against the eager reference, on CPU.

`bucketed=True` runs on CPU exactly what the CUDA graphs replay: steps padded to bucket sizes, keys read over the
whole capacity. A small capacity makes the cache grow mid-answer. scripts/gpu/check_fast.py runs the same
comparisons on the real models with the graphs themselves.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from aspd.engine import HybridEngine, Limits, SamplingParams
from aspd.engine.kv import BUCKETS, StaticKV
from aspd.testing import ARCHS, tiny_model, tiny_tokenizer
from aspd.tokens import add_control_tokens, text_ids

PROMPT = "Give three tips for staying healthy."


def engines(arch: str, **kw):
    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok))
    ctrl = add_control_tokens(tok, model)
    eager = HybridEngine(model, tok, engine="eager", **kw)
    fast = HybridEngine(model, tok, engine="fast", **kw)
    padded = HybridEngine(model, tok, engine="fast", **kw)
    padded._static = StaticKV(padded, capacity=48, bucketed=True)  # grows twice in a 40-token answer
    return ctrl, tok, eager, fast, padded


def forced(tok, ctrl, titles=("Diet", "Sleep", "Work")) -> list[int]:
    out = []
    for t in titles:
        out += [ctrl.title, *text_ids(tok, t), ctrl.title_end]
    return [*out, ctrl.para]


def same(a, b) -> None:
    assert a.answer_ids == b.answer_ids
    assert a.slots == b.slots
    assert (torch.stack(a.logits) - torch.stack(b.logits)).abs().max().item() < 1e-4
    assert a.stats.as_dict()["parallel_tokens"] == b.stats.as_dict()["parallel_tokens"]


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_equals_eager_serial_greedy(arch):
    _, _, eager, fast, padded = engines(arch)
    lim = Limits(max_new_tokens=40)
    ref = eager.generate(PROMPT, mode="serial", limits=lim, record=True)
    for eng in (fast, padded):
        same(ref, eng.generate(PROMPT, mode="serial", limits=lim, record=True))
    assert padded._static.capacity > 48  # it grew


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mask_mode,pos_mode", [("indep", "same-seq"), ("shared", "same-re"), ("indep", "predict")])
def test_fast_equals_eager_hybrid_greedy(arch, mask_mode, pos_mode):
    # predict reserves scale x guess positions per branch: small ones, so that the group fits the tiny context
    guess = {"predicted_length": 3, "predict_scale": 2} if pos_mode == "predict" else {}
    ctrl, tok, eager, fast, padded = engines(arch, mask_mode=mask_mode, pos_mode=pos_mode, **guess)
    lim = Limits(max_new_tokens=50, max_branch_tokens=9)
    ref = eager.generate(PROMPT, answer_prefix=forced(tok, ctrl), limits=lim, record=True)
    assert ref.stats.branches == [3]
    for eng in (fast, padded):
        same(ref, eng.generate(PROMPT, answer_prefix=forced(tok, ctrl), limits=lim, record=True))


def test_repetition_penalty_history_is_tracked_the_same_way():
    """Greedy with a strong penalty: every stream's seen-set decides the tokens, branches included."""
    ctrl, tok, eager, fast, padded = engines("qwen2")
    sp = SamplingParams(repetition_penalty=1.8)
    lim = Limits(max_new_tokens=60, max_branch_tokens=12)
    ref = eager.generate(PROMPT, answer_prefix=forced(tok, ctrl), sampling=sp, limits=lim, record=True)
    plain = eager.generate(PROMPT, answer_prefix=forced(tok, ctrl), limits=lim)
    assert ref.answer_ids != plain.answer_ids  # the penalty matters here
    for eng in (fast, padded):
        same(ref, eng.generate(PROMPT, answer_prefix=forced(tok, ctrl), sampling=sp, limits=lim, record=True))


def test_fast_engine_reuses_its_cache_across_answers():
    ctrl, tok, eager, fast, _ = engines("llama")
    lim = Limits(max_new_tokens=30, max_branch_tokens=8)
    prompts = ["Give tips.", "Python, Rust and Go are programming languages. Compare them in detail please."]
    caches = set()
    for p in prompts * 2:
        a = eager.generate(p, answer_prefix=forced(tok, ctrl, ("Speed", "Safety")), limits=lim)
        b = fast.generate(p, answer_prefix=forced(tok, ctrl, ("Speed", "Safety")), limits=lim)
        assert a.answer_ids == b.answer_ids
        caches.add(id(fast._static))
        assert not fast._static.owned and fast._static.free_slots == fast._static.capacity  # every slot freed
    assert len(caches) == 1


def test_fast_sampling_is_reproducible_per_seed_and_respects_limits():
    ctrl, tok, _, fast, _ = engines("gemma3")
    sp = SamplingParams(temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.1, seed=5)
    lim = Limits(max_new_tokens=45, max_branch_tokens=7)
    a = fast.generate(PROMPT, answer_prefix=forced(tok, ctrl), sampling=sp, limits=lim)
    b = fast.generate(PROMPT, answer_prefix=forced(tok, ctrl), sampling=sp, limits=lim)
    c = fast.generate(PROMPT, answer_prefix=forced(tok, ctrl), sampling=SamplingParams(temperature=0.9, seed=6),
                      limits=lim)
    assert a.answer_ids == b.answer_ids and a.answer_ids != c.answer_ids
    assert a.stats.tokens <= 45 and a.stats.branches == [3]


def test_warm_runs_every_bucket_at_every_span_with_a_progress_bar(capsys):
    """warm() steps every bucket at every span before the first answer, and with progress shows it on stderr (cold
    on a GPU it compiles for minutes); the warmed cache still gives the eager engine's answer."""
    ctrl, tok, eager, _, padded = engines("llama")
    padded._static = StaticKV(padded, capacity=1024, bucketed=True)
    padded._static.span_min = 256
    shapes = padded.warm(1024, progress=True)
    assert set(shapes) == {f"{b}{s}" for b in BUCKETS for s in ("", "@256")}
    assert "aspd: running the decode step" in capsys.readouterr().err
    assert padded.warm(1024) == shapes  # a second warm-up finds everything done
    assert not capsys.readouterr().err
    lim = Limits(max_new_tokens=30, max_branch_tokens=8)
    same(eager.generate(PROMPT, answer_prefix=forced(tok, ctrl), limits=lim, record=True),
         padded.generate(PROMPT, answer_prefix=forced(tok, ctrl), limits=lim, record=True))


def test_unknown_engine_is_refused():
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    add_control_tokens(tok, model)
    with pytest.raises(ValueError, match="engine must be one of"):
        HybridEngine(model, tok, engine="turbo")


class CpuGraphKV(StaticKV):
    """StaticKV with the CUDA graphs' replay path on CPU: `capture` keeps the bucket's static input, rows and
    logits buffers, and `replay` reruns the captured step on them in place, as a graph replay does. Only the
    CUDA calls are stood in for; run()'s own graph logic (buffers per bucket and row kind, the copies into
    them, the clone of the output, dropping graphs when the cache grows) runs as on a GPU."""

    def __init__(self, eng, capacity: int):
        super().__init__(eng, capacity, bucketed=True)
        self.graphs_on = True
        self.captures = 0
        self.spans_seen = set()

    def _try_capture(self, size, explicit, span):
        from aspd.engine.kv import _Graph

        inputs = self._inputs([], [], size).to(self.e.device)
        rows = self._rows([], size, span).to(self.e.device) if explicit else None
        logits = self._step(inputs, span, rows)

        class Replay:
            def replay(_self):
                logits.copy_(self._step(inputs, span, rows))

        self.captures += 1
        self.spans_seen.add(span if span < self.capacity else 'all')
        self.graphs[(size, explicit, span)] = _Graph(Replay(), inputs, logits, rows)
        return self.graphs[(size, explicit, span)]


@pytest.mark.parametrize("span_min", [None, 16])
@pytest.mark.parametrize("mode", ["serial", "hybrid", "pasta"])
def test_graph_replay_path_gives_the_eager_answers(mode, span_min, monkeypatch):
    """span_min 16: graphs read 16, 64, 256 slots or the whole cache, whichever holds the slots in use."""
    from aspd.pasta.tokens import add_pasta_tokens

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: t)  # page-locked staging needs CUDA
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    ctrl = add_control_tokens(tok, model)
    tags = add_pasta_tokens(tok, model)
    eager = HybridEngine(model, tok, engine="eager")
    graphed = HybridEngine(model, tok, engine="fast")
    # Room for the prompt and a few answer tokens: the cache grows mid-answer, and the graphs are captured again.
    kv = CpuGraphKV(graphed, capacity=len(eager.prompt_ids(PROMPT)) + 4)  # the scratch headroom comes on top
    first = kv.capacity
    if span_min:
        kv.span_min = span_min
    graphed._static = kv
    kw = {"hybrid": {"answer_prefix": forced(tok, ctrl)}, "serial": {},
          "pasta": {"answer_prefix": [tags.scope, *text_ids(tok, "A:"), tags.promise, *text_ids(tok, " B:"),
                                      tags.promise, tags.scope_end, min(eager.eot)]}}[mode]
    lim = Limits(max_new_tokens=40, max_branch_tokens=7)
    ref = eager.generate(PROMPT, mode=mode, limits=lim, record=True, **kw)
    got = graphed.generate(PROMPT, mode=mode, limits=lim, record=True, **kw)
    same(ref, got)
    assert ref.stats.parallel_tokens > 0 or mode == "serial"
    assert kv.capacity > first and kv.captures > len(kv.graphs)  # recaptured after growing
    assert any(explicit for _, explicit, _ in kv.graphs) == (mode == "pasta")
    if span_min is None:
        assert kv.spans_seen == {"all"}
    else:  # the prompt needs 64 slots already
        assert 64 in kv.spans_seen


@given(st.lists(st.integers(0, 9), max_size=8), st.lists(st.integers(0, 9), max_size=8), st.integers(0, 20))
def test_branch_history_reads_as_the_joined_list(main: list[int], own: list[int], start: int) -> None:
    """The sampler reads a branch's history in place (main stream, then the branch): the same tokens, lengths and
    tails as the joined list it replaces."""
    from aspd.engine.core import _BranchHistory

    h, joined = _BranchHistory(main, own), main + own
    assert len(h) == len(joined) and list(h) == joined and h[start:] == joined[start:]
    assert [h[i] for i in range(-len(joined), len(joined))] == joined + joined
