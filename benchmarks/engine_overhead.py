"""The decoding engine's own work per step, without the model: each cache view's forward is replaced by random
logits, so what is timed between two forwards is the engine's sampling and bookkeeping, the part of a step that
a faster forward does not shrink (on the H200, greedy: 63 us a serial step, 109 us a step of 16 branches;
`results/engine_overhead_gpu_smollm2-135m/`).

For each N in --branches, one answer announces N titles (forced through `answer_prefix`, as engine_speed.py does)
and decodes N branches of --branch-tokens + 8 tokens each (title prefix and end included); N = 1 is a serial
answer of --branch-tokens tokens. Reported per N: the median time between forwards of the steps that fed N branch
tokens, and of the serial steps of the same answers (those that read the pending titles), in microseconds, and
the whole answer's engine time.

    python benchmarks/engine_overhead.py --model tiny --out benchmarks/results/engine_overhead_cpu
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import pstats
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_speed import ForwardTimer, forced_group, load, titles_for, write_report  # noqa: E402

from aspd.bench.report import machine_info  # noqa: E402
from aspd.engine import HybridEngine, Limits  # noqa: E402
from aspd.engine.sampling import SamplingParams  # noqa: E402


class StubForward:
    """Every cache view's `feed` returns random logits (fixed seed) instead of running the model; the end of the
    answer is never drawn, and the end of a branch only when its cap forces it, so every branch runs to its cap
    and every answer to its budget."""

    def __init__(self, eng: HybridEngine, device: str):
        self.vocab, self.device = eng.vocab, device
        self.never = torch.tensor(sorted(eng.eot), device=device)
        self.end = eng.ctrl.branch_end
        self.gen = torch.Generator(device=device).manual_seed(0)
        self._orig: list[Any] = []

    def logits(self, n: int) -> torch.Tensor:
        out = torch.randn(n, self.vocab, generator=self.gen, device=self.device)
        out[:, self.never] = float("-inf")
        out[:, self.end] = -1e4  # drawn only where every other token is banned
        return out

    def __enter__(self) -> StubForward:
        for view in ForwardTimer.VIEWS:
            self._orig.append(view.feed)
            view.feed = lambda kv, ids, *a, **k: self.logits(len(ids))  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        for view, orig in zip(ForwardTimer.VIEWS, self._orig, strict=True):
            view.feed = orig  # type: ignore[method-assign]


def run(eng: HybridEngine, args: argparse.Namespace) -> list[dict[str, Any]]:
    prompt = eng.prompt_ids("Write a detailed guide on staying healthy.")
    eng.context = 1 << 30  # the stub has no position limit; the tiny model's 512 would refuse large groups
    out = []
    for n in args.branches:
        par: list[float] = []
        ser: list[float] = []
        answer: list[float] = []
        forced = forced_group(eng, titles_for(eng.tokenizer, n)) if n > 1 else []  # tokenized once, untimed
        for rep in range(args.warmup + args.repeats):
            with StubForward(eng, args.device), ForwardTimer(args.device) as timer:
                t0 = time.perf_counter()
                if n == 1:
                    g = eng.generate(prompt, mode="serial", limits=Limits(max_new_tokens=args.branch_tokens),
                                     sampling=args.sampling)
                else:
                    cap = args.branch_tokens + 8
                    lim = Limits(max_new_tokens=len(forced) + n * cap, max_branches=n, max_branch_tokens=cap,
                                 max_groups=1)  # the budget ends with the group
                    g = eng.generate(prompt, answer_prefix=forced, limits=lim, sampling=args.sampling)
                    if g.stats.branches != [n]:
                        raise SystemExit(f"the forced group of {n} did not open: {g.stats.branches}")
                seconds = time.perf_counter() - t0
            if rep < args.warmup:
                continue
            answer.append(seconds)
            fwd, step, _ = timer.steps(n, parallel=n > 1)
            par += [s - f for f, s in zip(fwd, step, strict=True)]
            if n > 1:
                fwd, step, _ = timer.steps(1, parallel=False)
                ser += [s - f for f, s in zip(fwd, step, strict=True)]
        row = {"branches": n, "step_us": 1e6 * statistics.median(par), "steps": len(par),
               "serial_step_us": 1e6 * statistics.median(ser) if ser else None,
               "answer_ms": 1e3 * statistics.median(answer), "forwards": g.stats.forwards}
        out.append(row)
        print(f"  N={n:>2}: step {row['step_us']:8.1f} us  serial step {row['serial_step_us'] or 0:8.1f} us  "
              f"answer {row['answer_ms']:7.2f} ms", file=sys.stderr, flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--branches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16])
    p.add_argument("--branch-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--paper-sampling", action="store_true",
                   help="sample as `aspd bench speed --paper-sampling --repetition-penalty 1.05` does (default greedy)")
    p.add_argument("--out", required=True, help="path without suffix: .json and .md are written")
    p.add_argument("--profile", action="store_true",
                   help="then run again under cProfile and write OUT.profile.txt, by own time (where a step's "
                        "host time goes; the profiler slows every call, so the table comes from the run before)")
    args = p.parse_args()
    args.sampling = (SamplingParams(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05)
                     if args.paper_sampling else SamplingParams())
    model, tok = load(args.model, args.device, "float32")
    eng = HybridEngine(model, tok, engine="fast", compile=False)
    rows = run(eng, args)
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(run, eng, args)
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(40)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".profile.txt").write_text(text.getvalue())
    res = {"benchmark": "engine_overhead", "command": shlex.join(["python", *sys.argv]),
           "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine_info(args.device),
           "model": args.model, "device": args.device,
           "settings": vars(args) | {"out": None, "sampling": repr(args.sampling)}, "rows": rows}
    lines = [f"# Engine work per step without the model ({args.model}, {args.device}, "
             f"{'paper sampling' if args.paper_sampling else 'greedy'})", "",
             f"- command: `{res['command']}`", f"- date: {res['date']}", "",
             "| branches | engine us per step | steps | serial steps of the answer, us | answer ms |",
             "|---:|---:|---:|---:|---:|"]
    for r in rows:
        ser = f"{r['serial_step_us']:.1f}" if r["serial_step_us"] is not None else "-"
        lines.append(f"| {r['branches']} | {r['step_us']:.1f} | {r['steps']} | {ser} | {r['answer_ms']:.2f} |")
    write_report(args.out, res, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
