"""Host time of the sampling draw on its own: `torch.multinomial` against the exponential race the engines use
(`aspd.engine.sampling._race`), and the whole paper-sampling draw (temperature 0.7, top-k 20, top-p 0.8, then
reading the token) each way, beside a greedy draw. "host" times a call from an idle device: what the host spends
before it can go on (on an H200, about 100 us for `torch.multinomial` and `torch.topk`, 24 us for the race).

    python benchmarks/sampling_ops.py --device cuda --out benchmarks/results/sampling_gpu/sampling_ops
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_speed import sync, write_report  # noqa: E402

from aspd.bench.report import machine_info  # noqa: E402
from aspd.engine.sampling import _race  # noqa: E402


def host_us(fn: Callable[[], object], device: str, n: int) -> float:
    """Median time one call keeps the host, starting from an idle device."""
    for _ in range(10):
        fn()
    times = []
    for _ in range(n):
        sync(device)
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    sync(device)
    return 1e6 * sorted(times)[n // 2]


def wall_us(fn: Callable[[], object], device: str, n: int) -> float:
    """Mean time per call when calls follow each other (what a decode loop sees)."""
    for _ in range(10):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return 1e6 * (time.perf_counter() - t) / n


def measure(logits: torch.Tensor, gen: torch.Generator, device: str, n: int) -> dict[str, float]:
    top = torch.topk(logits, 20).values.softmax(-1)

    def multinomial(pr: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(pr, 1, generator=gen)

    def race(pr: torch.Tensor) -> torch.Tensor:
        return _race(pr, gen)

    def draw(pick: Callable[[torch.Tensor], torch.Tensor]) -> list[int]:
        v, order = torch.topk(logits / 0.7, 20)
        probs = v.softmax(-1)
        probs = v.masked_fill(probs.cumsum(-1) - probs > 0.8, float("-inf")).softmax(-1)
        return order.gather(-1, pick(probs)).tolist()

    return {
        "multinomial_host_us": host_us(lambda: multinomial(top), device, n),
        "race_host_us": host_us(lambda: race(top), device, n),
        "topk_host_us": host_us(lambda: torch.topk(logits, 20), device, n),
        "draw_multinomial_us": wall_us(lambda: draw(multinomial), device, n),
        "draw_race_us": wall_us(lambda: draw(race), device, n),
        "draw_greedy_us": wall_us(lambda: logits.argmax(-1).tolist(), device, n),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--rows", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--out", required=True, help="path without suffix: .json and .md are written")
    args = p.parse_args()
    gen = torch.Generator(device=args.device).manual_seed(0)
    rows = [{"rows": r, **measure(torch.randn(r, args.vocab, device=args.device, generator=gen), gen, args.device,
                                  args.calls)} for r in args.rows]
    dev = args.device
    res = {"benchmark": "sampling_ops", "command": shlex.join(["python", *sys.argv]),
           "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine_info(dev),
           "torch": torch.__version__, "settings": vars(args), "rows": rows}
    lines = [f"# The sampling draw on {dev}, vocabulary {args.vocab}", "", f"- command: `{res['command']}`",
             f"- date: {res['date']}; torch {torch.__version__}", "",
             "| rows | multinomial, host us | race, host us | topk, host us | paper draw + read, multinomial us "
             "| the same, race us | greedy draw + read us |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for x in rows:
        lines.append(f"| {x['rows']} | {x['multinomial_host_us']:.1f} | {x['race_host_us']:.1f} | "
                     f"{x['topk_host_us']:.1f} | {x['draw_multinomial_us']:.1f} | {x['draw_race_us']:.1f} | "
                     f"{x['draw_greedy_us']:.1f} |")
    write_report(args.out, res, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
