"""The fast engine on real models on the GPU: greedy tokens equal to the eager engine's, in every decoding mode.

fp32 with TF32 off is the exactness check; bf16 is reported for information (both engines round differently:
a padded bucket and a longer key range change the kernels' summation order). The fast engine's own serial
decode is also checked against HF `generate`. Writes one JSON.

Usage: python scripts/gpu/check_fast.py --models aspd-smollm2-135m,aspd-qwen2.5-coder-0.5b \
           --questions vicuna_bench.jsonl --limit 6 --out fast_checks.json [--modes serial,hybrid,pasta,sot]
A mode the model has no tokens for (pasta without PASTA tags) is skipped for that model.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from aspd.bench.data import load_questions
from aspd.engine import HybridEngine, Limits
from aspd.engine.verify import check_engines_agree, check_serial_equals_generate
from aspd.loading import load_model, read_aspd_config
from aspd.tokens import add_control_tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True, help="comma-separated registry names or folders")
    ap.add_argument("--questions", required=True, help="a bench JSONL (first turn of each question is used)")
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--out", required=True)
    ap.add_argument("--modes", default="serial,hybrid")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    prompts = [q.turns[0] for q in load_questions(args.questions)[: args.limit]]
    lim = Limits(max_new_tokens=args.max_new_tokens)
    report: dict = {"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device, "torch": torch.__version__,
                    "date": time.strftime("%Y-%m-%d"), "limits": {"max_new_tokens": args.max_new_tokens},
                    "runs": []}
    for name in args.models.split(","):
        meta = read_aspd_config(name)
        for dtype in ("float32", "bfloat16"):
            model, tok = load_model(name, device=args.device, dtype=dtype)
            add_control_tokens(tok, model)
            modes = {"mask_mode": meta.get("mask_mode", "indep"), "pos_mode": meta.get("pos_mode", "same-seq")}
            eager = HybridEngine(model, tok, engine="eager", **modes)
            fast = HybridEngine(model, tok, engine="fast", **modes)
            for i, p in enumerate(prompts):
                for mode in args.modes.split(","):
                    if mode == "pasta" and fast.pasta is None:
                        continue
                    r = check_engines_agree(eager, fast, p, mode=mode, limits=lim)
                    r.update(model=name, dtype=dtype, question=i, mode=mode)
                    report["runs"].append(r)
                    print(json.dumps(r), flush=True)
            hf = check_serial_equals_generate(fast, prompts[0], n=64)
            hf.pop("text")
            report["runs"].append({"model": name, "dtype": dtype, "check": "fast serial = HF generate", **hf})
            print(json.dumps(report["runs"][-1]), flush=True)
            del eager, fast, model
            if args.device == "cuda":
                torch.cuda.empty_cache()
    agree = [r for r in report["runs"] if "mode" in r]
    report["summary"] = {
        f"{m}/{d}": f"{sum(r['ok'] for r in agree if r['model'] == m and r['dtype'] == d)}"
                    f"/{sum(1 for r in agree if r['model'] == m and r['dtype'] == d)} answers identical"
        for m in args.models.split(",") for d in ("float32", "bfloat16")
    }
    print(json.dumps(report["summary"], indent=1))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
