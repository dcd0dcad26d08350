"""Where the fast engine's decode step spends its time, per number of rows (issue 19: a forward of 2-16 rows
costs 1.3-1.4x one of a single row on the H200). For each attention variant, the bucketed step of 1, 2, 4, 8 and
16 rows is captured as the engine captures it (a CUDA graph, compiled or not), its replay timed, and one replay
per size profiled: CUDA kernel time per step, grouped by kernel. Rows are padding rows (they read slot 0 only);
the kernels and their sizes are those of real rows, which is what the time depends on.

Variants: HF's SDPA with torch's own backend choice and with one backend forced (efficient, math, cuDNN), HF's
eager attention (matmul + softmax, which inductor fuses when compiled), each compiled or not; compiled, what ships
(`decode`: aspd.attention.decode_attention, the engine's choice where it compiles on CUDA), also with one static
graph per bucket (ASPD_COMPILE_SHAPES=static) and with autotuned matmuls (max-autotune-no-cudagraphs).

Usage: python scripts/gpu/profile_step.py --model smollm2-135m --out profile.json [--variants a,b] [--budget S]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
import traceback
from collections import defaultdict
from typing import Any

import torch

from aspd.engine import HybridEngine
from aspd.engine.kv import StaticKV
from aspd.loading import load_model
from aspd.tokens import add_control_tokens

SIZES = (1, 2, 4, 8, 16)
# name -> (HF attention implementation, forced SDPA backend or None, compiled, environment of aspd.engine.compiled)
VARIANTS: dict[str, tuple[str, str | None, bool, dict[str, str]]] = {
    "sdpa": ("sdpa", None, False, {}),
    "sdpa-efficient": ("sdpa", "EFFICIENT_ATTENTION", False, {}),
    "sdpa-math": ("sdpa", "MATH", False, {}),
    "sdpa-cudnn": ("sdpa", "CUDNN_ATTENTION", False, {}),
    "eager-attn": ("eager", None, False, {}),
    "sdpa+compile": ("sdpa", None, True, {"ASPD_DECODE_ATTENTION": "0"}),
    "decode+compile": ("sdpa", None, True, {}),  # what ships: aspd.attention.decode_attention
    "eager-attn+compile": ("eager", None, True, {}),
    "decode+compile-static": ("sdpa", None, True, {"ASPD_COMPILE_SHAPES": "static"}),
    "eager-attn+compile-static": ("eager", None, True, {"ASPD_COMPILE_SHAPES": "static"}),
    "decode+autotune": ("sdpa", None, True, {"ASPD_COMPILE_MODE": "max-autotune-no-cudagraphs"}),
}


def backend_ctx(name: str | None) -> contextlib.AbstractContextManager[Any]:
    if name is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, name)])


def kernel_table(prof: Any, steps: int) -> list[dict[str, Any]]:
    """CUDA kernels of the profiled steps: microseconds and launches per step, largest first."""
    total: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for ev in prof.events():
        if getattr(ev, "device_type", None) == torch.autograd.DeviceType.CUDA:
            total[ev.name] += ev.device_time if hasattr(ev, "device_time") else ev.cuda_time
            calls[ev.name] += 1
    rows = [{"kernel": k[:110], "us": round(v / steps, 2), "calls": round(calls[k] / steps, 1)}
            for k, v in total.items()]
    return sorted(rows, key=lambda r: -r["us"])


def profiled(fn: Any, device: str, steps: int = 10) -> list[dict[str, Any]]:
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(steps):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
    return kernel_table(prof, steps)


def time_variant(model: Any, tok: Any, attn: str, backend: str | None, compiled: bool, env: dict[str, str],
                 reps: int, device: str) -> dict[str, Any]:
    model.set_attn_implementation(attn)
    for k in ("ASPD_COMPILE_SHAPES", "ASPD_COMPILE_MODE", "ASPD_DECODE_ATTENTION"):
        os.environ.pop(k, None)
    os.environ.update(env)
    eng = HybridEngine(model, tok, engine="fast", compile=compiled)
    kv = StaticKV(eng, 1024, bucketed=True, compile=compiled)  # 1,280 slots read by every step, as in engine_speed.py
    span = kv.spans()[-1]
    out: dict[str, Any] = {"span": span, "sizes": {}}
    with torch.inference_mode(), backend_ctx(backend):
        for size in SIZES:
            t0 = time.perf_counter()
            if kv.graphs_on:
                g = kv._capture(size, False, span)
                if g is None:
                    raise RuntimeError("capture failed")
                run = g.graph.replay
                direct = lambda i=g.inputs: kv._bucket_step(i, span)  # noqa: E731
            else:
                inputs = kv._inputs([], [], size).to(eng.device)
                kv._step(inputs, span)
                run = direct = lambda i=inputs: kv._bucket_step(i, span)  # noqa: E731
            setup = time.perf_counter() - t0
            for _ in range(5):
                run()
            ms = []
            for _ in range(reps):
                if device == "cuda":
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    run()
                    b.record()
                    b.synchronize()
                    ms.append(a.elapsed_time(b))
                else:
                    t = time.perf_counter()
                    run()
                    ms.append(1e3 * (time.perf_counter() - t))
            # The replay's kernels (if the profiler sees inside graphs), and the same step launched without the graph.
            tables = {"graph": profiled(run, device), "direct": profiled(direct, device)}
            table = tables["graph"] or tables["direct"]
            out["sizes"][size] = {"ms": round(statistics.median(ms), 4), "setup_s": round(setup, 2),
                                  "kernel_us": round(sum(r["us"] for r in table), 1),
                                  "launches": round(sum(r["calls"] for r in table), 1),
                                  **{f"kernels_{k}": t[:25] for k, t in tables.items()}}
            print(f"  {size:>2} rows: {out['sizes'][size]['ms']:.3f} ms/step, kernels "
                  f"{out['sizes'][size]['kernel_us']:.0f} us in {out['sizes'][size]['launches']:.0f} launches "
                  f"(setup {setup:.1f} s)", flush=True)
    if kv.compiled is not None:
        out["compile_error"] = kv.compiled.error
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--budget", type=float, default=1e9, help="start no variant after this many seconds")
    args = ap.parse_args()
    start = time.perf_counter()
    if args.model == "tiny":
        from aspd.testing import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        model = tiny_model("llama", len(tok)).to(args.device)
    else:
        model, tok = load_model(args.model, device=args.device, dtype=args.dtype)
    add_control_tokens(tok, model)
    report: dict[str, Any] = {"model": args.model, "dtype": args.dtype, "torch": torch.__version__,
                              "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
                              "date": time.strftime("%Y-%m-%d"), "variants": {}}
    for name in args.variants.split(","):
        if time.perf_counter() - start > args.budget:
            report["variants"][name] = {"error": "skipped: out of time"}
            continue
        print(f"{name}:", flush=True)
        try:
            report["variants"][name] = time_variant(model, tok, *VARIANTS[name], args.reps, args.device)
        except Exception as err:
            report["variants"][name] = {"error": f"{type(err).__name__}: {err}",
                                        "trace": traceback.format_exc()[-2000:]}
            print(f"  failed: {type(err).__name__}: {str(err)[:300]}", flush=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(f"\n{'variant':<20}" + "".join(f"{s:>9}" for s in SIZES) + "   16 vs 1")
    for name, v in report["variants"].items():
        if "sizes" in v:
            ms = [v["sizes"][s]["ms"] for s in SIZES]
            print(f"{name:<20}" + "".join(f"{m:>9.3f}" for m in ms) + f"   {ms[-1] / ms[0]:.2f}x")
        else:
            print(f"{name:<20} {v['error'][:80]}")


if __name__ == "__main__":
    main()
