"""The engine's long fuzz run: random control-token streams through the real decoding loop, every invariant of
`aspd.testing.fuzz.check` asserted on every answer (limits, termination, finish reason, markup round trip,
stream == text, no control string in the text, doc / raw / ids agreeing with the events).

Tiny random models (Llama, Qwen2, Gemma 3) with biased control rows; eager and fast (bucketed) engines; hybrid and
serial modes; each stream short. Shards run in worker processes with their own seeds; the JSON result holds the
command, machine, date, counts of what was exercised and every failing case (none when the invariants hold).

    python benchmarks/engine_fuzz.py --cases 10000 --workers 2 --out benchmarks/results/engine_fuzz_cpu.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shlex
import sys
import time
from pathlib import Path
from typing import Any


def shard(args: tuple[int, int]) -> dict[str, Any]:
    import torch

    from aspd.testing.fuzz import run_fuzz

    n, seed = args
    torch.set_num_threads(1)  # 2-layer models: threads only add contention between the workers
    return run_fuzz(n, seed=seed)


def _commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True,
                               cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() + (" (src modified)" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0, help="shard k uses seed SEED + k")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shards", type=int, default=0, help="default: 8 per worker")
    ap.add_argument("--out", type=Path, default=None, help="JSON result (default: stdout only)")
    a = ap.parse_args(argv)
    from aspd.bench.report import machine_info

    shards = a.shards or 8 * a.workers
    sizes = [a.cases // shards + (k < a.cases % shards) for k in range(shards)]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(a.workers) as pool:
        parts = pool.map(shard, [(n, a.seed + k) for k, n in enumerate(sizes)], chunksize=1)
    seconds = time.perf_counter() - t0
    exercised: dict[str, int] = {}
    for p in parts:
        for k, v in p["exercised"].items():
            exercised[k] = exercised.get(k, 0) + v
    failing = [c for p in parts for c in p["failing_cases"]]
    result = {
        "command": shlex.join(["python", "benchmarks/engine_fuzz.py", *(sys.argv[1:] if argv is None else argv)]),
        "commit": _commit(),
        "machine": machine_info("cpu"),
        "workers": a.workers,
        "seconds": round(seconds, 1),
        "cases": sum(p["cases"] for p in parts),
        "failures": sum(p["failures"] for p in parts),
        "invariants_hold": not any(p["failures"] for p in parts),
        "exercised": dict(sorted(exercised.items())),
        "slowest_case_seconds": max(p["slowest_case_seconds"] for p in parts),
        "shard_seeds": [a.seed + k for k in range(shards)],
        "failing_cases": failing[:50],
    }
    text = json.dumps(result, indent=1, default=str)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "failing_cases"}, indent=1))
    return 0 if result["invariants_hold"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
