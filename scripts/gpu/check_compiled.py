"""The compiled fast engine on a real model on the GPU: greedy tokens equal to the eager engine's in fp32 (TF32
off), serially and with a forced group of branches, plus the compile and capture cost. Writes one JSON, also when
compiling fails (the engine then decodes with the eager step; the error is in the JSON).

Usage: python scripts/gpu/check_compiled.py --model smollm2-135m --out compiled_checks.json
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from typing import Any

import torch

from aspd.attention import use_decode_attention
from aspd.engine import HybridEngine, Limits
from aspd.engine.compiled import decode_attention_on
from aspd.engine.verify import check_engines_agree, forced_group
from aspd.loading import load_model
from aspd.tokens import add_control_tokens

PROMPTS = [
    ("Give me three tips for staying healthy.", ("Diet", "Exercise", "Sleep")),
    ("Compare Python and Rust for a command-line tool.", ("Python", "Rust", "Tooling", "Speed")),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--decode-attention", action="store_true",
                    help="the fast engine on aspd.attention.decode_attention, the eager one on SDPA (the default on a "
                         "GPU, where the fast engine switches its model by itself unless ASPD_DECODE_ATTENTION=0)")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    report: dict[str, Any] = {"model": args.model, "dtype": args.dtype, "torch": torch.__version__,
                              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else args.device,
                              "date": time.strftime("%Y-%m-%d"), "runs": []}
    try:
        model, tok = load_model(args.model, device=args.device, dtype=args.dtype)
        add_control_tokens(tok, model)
        eager = HybridEngine(model, tok, engine="eager")
        # On CUDA the compiled engine switches its model to decode_attention: the reference needs a model of its own,
        # else it would run the same attention and the check would not cover it.
        if args.decode_attention or (torch.device(args.device).type == "cuda" and decode_attention_on()):
            fast_model, _ = load_model(args.model, device=args.device, dtype=args.dtype)
            add_control_tokens(tok, fast_model)
            use_decode_attention(fast_model)
        else:
            fast_model = model
        fast = HybridEngine(fast_model, tok, engine="fast", compile=True)
        fast.static_kv()  # the cache (and with it the switch of attention) is made here, not at the first answer
        report["attention"] = {"eager": model.config._attn_implementation,
                               "fast": fast_model.config._attn_implementation}
        for prompt, titles in PROMPTS:
            for mode in ("serial", "group"):
                t0 = time.perf_counter()
                if mode == "serial":
                    r = check_engines_agree(eager, fast, prompt, mode="serial",
                                            limits=Limits(max_new_tokens=args.max_new_tokens))
                else:
                    lim = Limits(max_new_tokens=args.max_new_tokens + 64, max_branch_tokens=24,
                                 max_branches=len(titles))
                    r = check_engines_agree(eager, fast, prompt, limits=lim,
                                            answer_prefix=forced_group(fast, titles, "Here is the plan.\n"))
                r.update(prompt=prompt, mode=mode, seconds=round(time.perf_counter() - t0, 2))
                report["runs"].append(r)
                print(json.dumps(r), flush=True)
        kv = fast._static
        report["compiled"] = {"active": kv.compiled is not None and kv.compiled.active,
                              "error": kv.compiled.error if kv.compiled else "not compiled",
                              "compile_s": kv.compiled.seconds if kv.compiled else {},
                              "capture_s": kv.capture_seconds, "graphs": kv.graphs_on}
    except Exception as err:  # keep what ran, and why the rest did not
        report["error"] = f"{type(err).__name__}: {err}\n{traceback.format_exc()[-3000:]}"
        print(report["error"], flush=True)
    runs = report["runs"]
    report["summary"] = f"{sum(r['ok'] for r in runs)}/{len(runs)} answers identical (fp32 eager vs fast compiled)"
    print(report["summary"], flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
