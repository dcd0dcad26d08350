"""Where a batched step's time goes: N greedy requests in one BatchEngine (as `aspd serve` runs them), stepped in
the main thread under cProfile, after a warm-up round. Prints ms per step and the top functions.
Usage: python scripts/gpu/profile_batch.py MODEL [--device cuda] [--requests 32] [--tokens 128]"""
import argparse
import cProfile
import pstats
import time

import torch

from aspd.engine import Limits
from aspd.engine.batch import BatchEngine, BatchRequest
from aspd.engine.core import HybridEngine
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
