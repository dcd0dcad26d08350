"""Run the engine's exactness checks on a real model on the GPU and write them as JSON.

Usage: python scripts/gpu/engine_checks.py --model FOLDER --out results.json [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from aspd.engine import HybridEngine
from aspd.engine.verify import check_consistency, check_isolation, check_serial_equals_generate
from aspd.loading import load_model
from aspd.tokens import add_control_tokens

PROMPTS = [
    ("Give me three tips for staying healthy.", ("Diet", "Exercise", "Sleep")),
    ("Compare Python and Rust for a command-line tool.", ("Python", "Rust")),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    # Exactness is checked in fp32 with TF32 off; bf16 is reported for information.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    report: dict = {"model": args.model, "device": torch.cuda.get_device_name() if args.device == "cuda" else
                    platform.processor(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "runs": []}
    for dtype in ("float32", "bfloat16"):
        model, tok = load_model(args.model, device=args.device, dtype=dtype)
        add_control_tokens(tok, model)
        eng = HybridEngine(model, tok)
        for prompt, titles in PROMPTS:
            s = check_serial_equals_generate(eng, prompt, n=48)
            iso = check_isolation(eng, prompt, titles, cap=16)
            con = check_consistency(eng, iso.pop("generation"))
            s.pop("text")
            run = {"dtype": dtype, "prompt": prompt, "serial_equals_generate": s, "isolation": iso,
                   "consistency": con}
            report["runs"].append(run)
            print(json.dumps(run))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
