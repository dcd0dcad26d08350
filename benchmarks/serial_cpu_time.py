"""Serial decoding cost per token of the fast engine on the CPU: wall time and process CPU time, one thread.

Process CPU time is what a step costs this process; on a machine shared with other work it is inflated far less
than wall time, so two versions of the engine can be compared there (run each in its own process, alternating).

    PYTHONPATH=src python benchmarks/serial_cpu_time.py --model smollm2-135m [--compile] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from aspd.engine import HybridEngine, Limits
from aspd.loading import load_model
from aspd.tokens import add_control_tokens

PROMPT = "Write a detailed guide on staying healthy, covering diet, sleep, exercise and stress."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--compile", action="store_true", help="the compiled step (aspd.engine.compiled)")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = load_model(args.model, device="cpu", dtype="float32")
    add_control_tokens(tok, model)
    eng = HybridEngine(model, tok, engine="fast", **({"compile": True} if args.compile else {}))
    eng.eot = set()  # every run decodes exactly --tokens tokens
    t0 = time.perf_counter()
    eng.generate(PROMPT, mode="serial", limits=Limits(max_new_tokens=4))  # compiles, when compiling
    first = time.perf_counter() - t0
    walls, cpus, ids = [], [], []
    for _ in range(args.runs):
        w, c = time.perf_counter(), time.process_time()
        ids = eng.generate(PROMPT, mode="serial", limits=Limits(max_new_tokens=args.tokens)).answer_ids
        walls.append((time.perf_counter() - w) / args.tokens)
        cpus.append((time.process_time() - c) / args.tokens)
    print(json.dumps({"model": args.model, "compile": args.compile, "first_run_s": round(first, 1),
                      "wall_ms_per_token": round(1e3 * statistics.median(walls), 1),
                      "cpu_ms_per_token": round(1e3 * statistics.median(cpus), 1),
                      "cpu_ms_runs": [round(1e3 * x, 1) for x in cpus], "first_ids": ids[:8]}))


if __name__ == "__main__":
    main()
