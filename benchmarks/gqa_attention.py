"""One attention call of a decoding step: transformers' SDPA against `aspd.attention.packed_sdpa_attention`.

For a query of k tokens over n cached tokens of a grouped-query model with a 4D mask (the engines' parallel
steps, and every step under torch.compile), transformers' SDPA copies the keys and values once per query head
before attending; the packed function stacks the query heads that share a key/value head instead. Both are timed
on the same inputs, alternating, and their outputs compared.

    python benchmarks/gqa_attention.py --device cpu --out benchmarks/results/gqa_attention_cpu
    python benchmarks/gqa_attention.py --device cuda --dtype bfloat16 --heads 12 --kv-heads 2 --head-dim 128

Defaults are Qwen2.5-Coder-1.5B's heads (12 query heads, 2 key/value heads, head size 128).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from aspd.attention import packed_sdpa_attention
from aspd.bench.report import machine_info


class _Layer(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def _time(fn, device: torch.device, repeats: int) -> float:
    """Median ms of `repeats` calls (one untimed first)."""
    fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--queries", default="1,2,4,8,16", help="query tokens per step (comma-separated)")
    p.add_argument("--cached", default="1024,4096", help="cached tokens attended over (comma-separated)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    layer = _Layer(args.heads // args.kv_heads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in (int(x) for x in args.cached.split(",")):
        for k in (int(x) for x in args.queries.split(",")):
            q = torch.randn(1, args.heads, k, args.head_dim, generator=gen).to(device, dtype)
            kv = [torch.randn(1, args.kv_heads, n, args.head_dim, generator=gen).to(device, dtype) for _ in "kv"]
            mask = (torch.rand(1, 1, k, n, generator=gen) > 0.3).to(device)
            mask[..., -1] = True  # no fully masked row
            inputs = (layer, q, *kv, mask)
            hf = lambda a=inputs: sdpa_attention_forward(*a)[0]  # noqa: E731
            packed = lambda a=inputs: packed_sdpa_attention(*a)[0]  # noqa: E731
            diff = (hf().float() - packed().float()).abs().max().item()
            t_hf, t_packed = [], []
            for _ in range(3):  # alternate, so drifting load hits both
                t_hf.append(_time(hf, device, args.repeats))
                t_packed.append(_time(packed, device, args.repeats))
            row = {"cached": n, "queries": k, "hf_ms": round(statistics.median(t_hf), 4),
                   "packed_ms": round(statistics.median(t_packed), 4), "max_abs_diff": diff}
            row["speedup"] = round(row["hf_ms"] / row["packed_ms"], 2)
            rows.append(row)
            print(f"cached {n:>6}  queries {k:>3}  HF {row['hf_ms']:>9.3f} ms  packed {row['packed_ms']:>9.3f} ms"
                  f"  {row['speedup']:>5.2f}x  max diff {diff:.1e}", flush=True)
    if args.out:
        cmd = "python " + " ".join(sys.argv)
        info = machine_info(device.type)
        report = {"command": cmd, "machine": info, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                  "config": vars(args), "rows": rows}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps(report, indent=1) + "\n")
        md = [f"# GQA attention of one decoding step: HF SDPA vs packed ({args.device}, {args.dtype})", "",
              f"- command: `{cmd}`", f"- machine: {json.dumps(info)}", f"- date: {report['date']}",
              f"- heads {args.heads}, key/value heads {args.kv_heads}, head size {args.head_dim}; medians of 3 x "
              f"{args.repeats} calls, alternating", "",
              "| cached | query tokens | HF SDPA ms | packed ms | speedup | max abs diff |",
              "|---:|---:|---:|---:|---:|---:|"]
        md += [f"| {r['cached']} | {r['queries']} | {r['hf_ms']} | {r['packed_ms']} | {r['speedup']}x | "
               f"{r['max_abs_diff']:.1e} |" for r in rows]
        Path(args.out + ".md").write_text("\n".join(md) + "\n")
        print(f"wrote {args.out}.json and {args.out}.md")


if __name__ == "__main__":
    main()
