"""Where a batched step's time goes: N greedy requests in one BatchEngine (as `aspd serve` runs them), stepped in
the main thread, after a warm-up round: ms per step unprofiled; then the forward alone (synchronised before and
after, so the rest of the step, sampling and bookkeeping, is timed apart) with rows and span per step; then
cProfile's top functions.
Usage: python scripts/gpu/profile_batch.py MODEL [--device cuda] [--requests 32] [--tokens 128]"""
import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

from aspd.engine import Limits
from aspd.engine.batch import BatchEngine, BatchRequest
from aspd.engine.core import HybridEngine
from aspd.engine.kv import StaticKV
from aspd.loading import model_folder

PROMPTS = ["Give three tips for staying healthy.", "What are the pros and cons of remote work?",
           "Explain how a bicycle works.", "Describe the water cycle."]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--device", default="cuda")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--max-slots", type=int, default=131072)
    p.add_argument("--top", type=int, default=30)
    a = p.parse_args()
    if a.model == "tiny":  # a random 2-layer Llama: the engine's own work with next to no forward
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
        from engine_speed import load

        eng = HybridEngine(*load("tiny", a.device, "float32"), engine="fast")
    else:
        eng = HybridEngine.from_pretrained(str(model_folder(a.model)), device=a.device)
    batch = BatchEngine(eng, max_batch=128, max_slots=a.max_slots)
    ids = [eng.prompt_ids(q) for q in PROMPTS]

    def run() -> tuple[int, int, float]:
        reqs = [BatchRequest(ids[i % len(ids)], "hybrid", limits=Limits(max_new_tokens=a.tokens))
                for i in range(a.requests)]
        for r in reqs:
            batch.submit(r)
        steps, t0 = 0, time.perf_counter()
        while batch.busy:
            batch.step()
            steps += 1
        if a.device == "cuda":
            torch.cuda.synchronize()
        return steps, sum(len(r.result.answer_ids) for r in reqs), time.perf_counter() - t0

    run()  # warm-up: cache, graphs
    steps, toks, dt = run()
    print(f"unprofiled: {a.requests} requests, {steps} steps, {toks} tokens, {dt:.2f} s, "
          f"{1000 * dt / steps:.2f} ms/step, {toks / dt:.0f} tok/s")
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    run_forward, timed = StaticKV.run, []

    def forward(self: StaticKV, parts):  # type: ignore[no-untyped-def]
        sync()
        t = time.perf_counter()
        out = run_forward(self, parts)
        sync()
        timed.append((time.perf_counter() - t, sum(len(p.ids) for p in parts), self.span))
        return out

    StaticKV.run = forward  # type: ignore[method-assign]
    steps, toks, dt = run()
    StaticKV.run = run_forward  # type: ignore[method-assign]
    fwd = sum(t for t, _, _ in timed)
    print(f"forward synchronised: {1000 * fwd / steps:.2f} ms/step of {1000 * dt / steps:.2f}; the rest "
          f"{1000 * (dt - fwd) / steps:.2f} ms/step ({1000 * (dt - fwd) / steps / a.requests:.3f} per request); "
          f"rows per forward median {sorted(r for _, r, _ in timed)[len(timed) // 2]}, "
          f"spans {sorted({s for _, _, s in timed})}")
    prof = cProfile.Profile()
    prof.enable()
    steps, toks, dt = run()
    prof.disable()
    print(f"profiled: {steps} steps, {1000 * dt / steps:.2f} ms/step")
    st = pstats.Stats(prof)
    st.sort_stats("tottime").print_stats(a.top)
    st.sort_stats("cumulative").print_stats(a.top)


if __name__ == "__main__":
    main()
