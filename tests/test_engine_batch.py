"""Continuous batching (aspd.engine.batch): every request's answer, batched with others, equals its answer alone.

Requests of different lengths, modes and sampling join at different steps; one opens a group (its branch
prefixes ride in the same forward as other requests' serial tokens). `bucketed=True` runs on CPU what the CUDA
graphs replay (padding rows, whole-capacity reads, a growing cache).
"""

from __future__ import annotations

import pytest
import torch

from aspd.engine import HybridEngine, Limits, SamplingParams
from aspd.engine.batch import BatchEngine, BatchRequest, reservation
from aspd.engine.kv import StaticKV
from aspd.testing import tiny_model, tiny_tokenizer
from aspd.tokens import add_control_tokens, text_ids

PROMPTS = ["Give three tips for staying healthy.", "Hi", "Python, Rust and Go are languages. Compare them in "
           "detail please, with examples of each.", "What is two plus two?"]


def engine(arch: str, bucketed: bool, **kw) -> HybridEngine:
    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok))
    add_control_tokens(tok, model)
    eng = HybridEngine(model, tok, engine="fast", **kw)
    eng._static = StaticKV(eng, capacity=64, bucketed=bucketed)  # small: it grows while requests run
    return eng


def forced(eng: HybridEngine, titles=("Diet", "Sleep", "Work")) -> list[int]:
    c, out = eng.ctrl, []
    for t in titles:
        out += [c.title, *text_ids(eng.tokenizer, t), c.title_end]
    return [*out, c.para]


def mixed(eng: HybridEngine, sampling: SamplingParams | None = None) -> list[dict]:
    """Request specs: hybrid with a forced group, serial, plain hybrid, another group; lengths differ."""
    sp = sampling or SamplingParams()
    return [
        dict(ids=eng.prompt_ids(PROMPTS[0]), mode="hybrid", answer_prefix=forced(eng),
             limits=Limits(max_new_tokens=30, max_branch_tokens=8), sampling=sp),
        dict(ids=eng.prompt_ids(PROMPTS[1]), mode="serial", limits=Limits(max_new_tokens=12),
             sampling=SamplingParams(sp.temperature, sp.top_k, sp.top_p, sp.repetition_penalty, sp.seed + 1)),
        dict(ids=eng.prompt_ids(PROMPTS[2]), mode="hybrid", limits=Limits(max_new_tokens=16), sampling=sp),
        dict(ids=eng.prompt_ids(PROMPTS[3]), mode="hybrid", answer_prefix=forced(eng, ("Speed", "Safety")),
             limits=Limits(max_new_tokens=26, max_branch_tokens=7),
             sampling=SamplingParams(sp.temperature, sp.top_k, sp.top_p, 1.3, sp.seed + 2)),
    ]


def alone(eng: HybridEngine, spec: dict):
    return eng.generate(spec["ids"], mode=spec["mode"], sampling=spec["sampling"], limits=spec["limits"],
                        answer_prefix=spec.get("answer_prefix", ()), record=True)


def batched(eng: HybridEngine, specs: list[dict], join_at: list[int], **kw) -> tuple[list, BatchEngine, int]:
    """Submit spec i at step join_at[i]; run to the end. Returns (answers, engine, most requests in one step)."""
    batch = BatchEngine(eng, **kw)
    reqs = [BatchRequest(record=True, **s) for s in specs]
    step, widest = 0, 0
    while step <= max(join_at) or batch.busy:
        for r, at in zip(reqs, join_at, strict=True):
            if at == step:
                batch.submit(r)
        batch.step()
        widest = max(widest, len(batch.running))
        step += 1
    assert all(r.done and r.error is None for r in reqs), [r.error for r in reqs]
    return [r.result for r in reqs], batch, widest


def same(a, b) -> None:
    assert a.answer_ids == b.answer_ids
    assert a.slots == b.slots  # ids, positions and owners of every fed token
    assert (torch.stack(a.logits) - torch.stack(b.logits)).abs().max().item() < 1e-4
    assert (a.finish_reason, a.stats.tokens, a.stats.branches) == (b.finish_reason, b.stats.tokens, b.stats.branches)


@pytest.mark.parametrize("arch,bucketed", [("llama", False), ("qwen2", True), ("gemma3", False)])
def test_batched_greedy_equals_alone(arch, bucketed):
    eng = engine(arch, bucketed)
    specs = mixed(eng)
    refs = [alone(eng, s) for s in specs]
    assert refs[0].stats.branches == [3] and refs[3].stats.branches == [2]
    got, batch, widest = batched(eng, specs, join_at=[0, 0, 3, 9])
    assert widest == 4  # all four ran side by side at some step
    for ref, g in zip(refs, got, strict=True):
        same(ref, g)
    kv = eng._static
    assert not kv.owned and kv.free_slots == kv.capacity - kv.headroom  # every slot went back
    assert batch.steps < sum(r.stats.forwards for r in refs)  # fewer forwards than one request at a time


def test_batched_seeded_sampling_equals_alone():
    eng = engine("qwen2", bucketed=False)
    specs = mixed(eng, SamplingParams(temperature=0.9, top_k=30, top_p=0.95, seed=11))
    refs = [alone(eng, s) for s in specs]
    got, _, _ = batched(eng, specs, join_at=[2, 0, 0, 5])
    for ref, g in zip(refs, got, strict=True):
        same(ref, g)


def calls_per_step(monkeypatch, sampling: SamplingParams | None, method: str) -> list[tuple[int, int]]:
    """Run the mixed requests batched; (requests in the batch, calls of torch.Tensor.`method`) for each step."""
    eng = engine("qwen2", bucketed=False)
    batch = BatchEngine(eng)
    reqs = [BatchRequest(**s) for s in mixed(eng, sampling)]
    for r in reqs:
        batch.submit(r)
    calls, real = [0], getattr(torch.Tensor, method)

    def counted(t: torch.Tensor, *a, **k):
        calls[0] += 1
        return real(t, *a, **k)

    monkeypatch.setattr(torch.Tensor, method, counted)
    per_step = []
    while batch.busy:
        wide = len(batch.running) + len(batch.waiting)
        calls[0] = 0
        batch.step()
        per_step.append((wide, calls[0]))
    assert all(r.done and r.error is None for r in reqs)
    return per_step


def test_a_step_reads_every_requests_tokens_with_one_host_sync(monkeypatch):
    """The sampled tokens of all running requests are read back together: one `.tolist()` per step, not one each."""
    per_step = calls_per_step(monkeypatch, SamplingParams(temperature=0.9, seed=3), "tolist")
    assert max(n for wide, n in per_step if wide == 4) == 1, per_step


def test_a_step_samples_every_greedy_request_with_one_argmax(monkeypatch):
    """Requests that sample alike are sampled together: one argmax per step for the three greedy requests, one
    for the fourth (greedy with a repetition penalty), not one each."""
    per_step = calls_per_step(monkeypatch, None, "argmax")
    assert max(n for wide, n in per_step if wide == 4) == 2, per_step


def test_same_re_and_predict_positions_are_per_request():
    for pos_mode, kw in (("same-re", {}), ("predict", {"predicted_length": 3, "predict_scale": 2})):
        eng = engine("llama", bucketed=False, mask_mode="shared", pos_mode=pos_mode, **kw)
        specs = mixed(eng)
        refs = [alone(eng, s) for s in specs]
        got, _, _ = batched(eng, specs, join_at=[0, 1, 1, 4])
        for ref, g in zip(refs, got, strict=True):
            same(ref, g)


def test_admission_waits_for_cache_room_and_cancel_frees_it():
    eng = engine("llama", bucketed=False)
    specs = mixed(eng)
    refs = [alone(eng, s) for s in specs]
    need = [reservation(len(s["ids"]), s["mode"], s["limits"]) for s in specs]
    # Room for the two largest together, never for three: the others wait in FIFO order, then all finish.
    room = sorted(need)[-1] + sorted(need)[-2]
    got, batch, widest = batched(eng, specs, join_at=[0, 0, 0, 0], max_slots=room)
    assert 1 <= widest <= 2
    for ref, g in zip(refs, got, strict=True):
        same(ref, g)
    # max_batch bounds the rows; a cancelled request leaves at the next step and the others are unaffected.
    batch = BatchEngine(eng, max_batch=2)
    reqs = [batch.submit(BatchRequest(record=True, **s)) for s in specs]
    batch.step()
    assert len(batch.running) == 2 and len(batch.waiting) == 2
    reqs[0].cancel()
    reqs[3].cancel()  # still waiting: never starts
    while batch.busy:
        batch.step()
    assert reqs[0].result is None and reqs[0].error is None and reqs[3].result is None
    for i in (1, 2):
        same(refs[i], reqs[i].result)
    assert not eng._static.owned


def test_a_failing_request_does_not_stop_the_others():
    eng = engine("llama", bucketed=False)
    specs = mixed(eng)
    ref = alone(eng, specs[1])

    def boom(ev):
        if ev.kind == "token":
            raise RuntimeError("client gone")

    batch = BatchEngine(eng)
    bad = batch.submit(BatchRequest(on_event=boom, **specs[0]))
    good = batch.submit(BatchRequest(record=True, **specs[1]))
    while batch.busy:
        batch.step()
    assert isinstance(bad.error, RuntimeError) and bad.result is None
    same(ref, good.result)
    with pytest.raises(ValueError, match="mode must be one of"):
        batch.submit(BatchRequest(ids=[1, 2], mode="beam"))
    with pytest.raises(ValueError, match="give it as messages"):
        batch.submit(BatchRequest(ids=[1, 2], mode="sot"))


def test_eager_engine_interleaves_requests():
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    add_control_tokens(tok, model)
    eng = HybridEngine(model, tok, engine="eager")
    specs = mixed(eng)
    refs = [alone(eng, s) for s in specs]
    got, _, widest = batched(eng, specs, join_at=[0, 1, 2, 3])
    assert widest == 4
    for ref, g in zip(refs, got, strict=True):
        same(ref, g)


def test_serve_cli_defaults_are_the_engine_defaults():
    from aspd.engine import batch
    from aspd.serve import cli

    assert (cli.DEFAULT_MAX_BATCH, cli.DEFAULT_MAX_SLOTS) == (batch.DEFAULT_MAX_BATCH, batch.DEFAULT_MAX_SLOTS)


def test_batched_on_decode_attention_equals_alone_on_sdpa():
    """The fast engine's attention where it compiles on CUDA (matrix products for steps of 2-64 rows): requests
    batched on it give the answers each gives alone on plain SDPA (the rows of other requests stay masked)."""
    from aspd.attention import use_decode_attention

    plain, eng = engine("qwen2", True), engine("qwen2", True)
    assert use_decode_attention(eng.model)
    refs = [alone(plain, s) for s in mixed(plain)]
    got, _, widest = batched(eng, mixed(eng), join_at=[0, 0, 3, 9])
    assert widest == 4
    for ref, g in zip(refs, got, strict=True):
        same(ref, g)


def test_the_worker_wakes_the_event_loop_once_per_step():
    """The server's model thread hands every stream item of a step to the event loop in one call, and each job
    still gets all of its chunks, in order, then its result."""
    import asyncio

    from aspd.serve.worker import GenRequest, Job, Worker

    eng = engine("qwen2", bucketed=False)
    specs = mixed(eng)

    async def main() -> tuple[list[list[tuple[str, object]]], int, int]:
        loop = asyncio.get_running_loop()
        calls, real = [0], loop.call_soon_threadsafe

        def counted(*a, **k):
            calls[0] += 1
            return real(*a, **k)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        worker = Worker(eng, max_queue=8, max_batch=4)
        jobs = [Job(GenRequest(s["ids"], s["mode"], s["sampling"], s["limits"], stream=True), loop) for s in specs]
        for j in jobs:
            assert worker.submit(j)
        worker.start()
        items: list[list[tuple[str, object]]] = [[] for _ in jobs]
        for j, got in zip(jobs, items, strict=True):
            while not got or got[-1][0] == "chunk":
                got.append(await j.items.get())
        worker.stop()
        return items, calls[0], worker.batch.steps

    items, calls, steps = asyncio.run(main())
    assert all(got[-1][0] == "done" and sum(k == "chunk" for k, _ in got) >= 5 for got in items)
    assert sum(len(got) for got in items) > 2 * steps  # several items per step ...
    assert calls <= steps + 1  # ... and one wake-up per step
    serial = items[[s["mode"] for s in specs].index("serial")]
    assert "".join(c.content for k, c in serial if k == "chunk") == serial[-1][1].text  # streamed = answered
