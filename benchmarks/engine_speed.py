"""Engine speed on one machine, per engine (eager, fast): step time vs live branches, serial speed vs HF generate.

(a) For N = 2, 4, 8, 16 a real group is opened by forcing N titles through `answer_prefix`; the engine then
    decodes N branches in lockstep, one forward per step. `feed` of the cache view (the engine's only model call: cache
    write, mask and model forward) is wrapped with a timer, and the steps that fed exactly N branch tokens are
    kept. N = 1 is the serial step (a group needs >= 2 branches), timed the same way during a serial decode.
    "step" is forward start to next forward start, so it includes sampling and bookkeeping.
(b) Serial decoding: each engine in serial mode and Hugging Face `model.generate` (greedy), same model, prompt
    and number of new tokens (end-of-turn disabled everywhere so all produce exactly that many), interleaved
    runs, medians of wall time with prefill included, and the ratios to HF. HF runs twice: with its default
    dynamic cache (`hf_generate`) and with `cache_implementation="static"` (`hf_static`), which on CUDA compiles
    the forward and replays CUDA graphs. The first (warm-up) run of each side is reported: it pays compiling.
(c) The bandwidth floor of a serial step: bytes of weights and KV cache one step reads, divided by the measured
    device-to-device copy bandwidth, and the share of it each engine reaches.

A plain model works: the control tokens are added with rows at the mean embedding, so the model decodes
structure only where it is forced. Engines: `eager`, `fast` (the static cache and CUDA graphs, step not compiled)
and `fast-compiled` (the same with the decode step through torch.compile, `aspd.engine.compiled`; the default on
CUDA); their compile and capture seconds are reported. Results: a table on stdout, JSON + Markdown at --out.

    ASPD_CACHE=/work/cache python benchmarks/engine_speed.py --model smollm2-135m --device cpu
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from aspd.bench.report import machine_info
from aspd.engine import HybridEngine, Limits
from aspd.engine.kv import DynamicKV, Slots
from aspd.layout import MAIN
from aspd.tokens import add_control_tokens, text_ids

PROMPT = "Write a detailed guide on staying healthy, covering diet, sleep, exercise and stress."


# ------------------------------------------------------------------------------------------ setup


def load(model_name: str, device: str, dtype: str) -> tuple[Any, Any]:
    if model_name == "tiny":  # a random 2-layer Llama: smoke tests of this script, no download
        from aspd.testing import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        model = tiny_model("llama", len(tok)).to(device)
    else:
        from aspd.loading import load_model

        model, tok = load_model(model_name, device=device, dtype=dtype)
    add_control_tokens(tok, model)  # idempotent; a plain model needs the rows before the engine accepts it
    return model, tok


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def write_report(out: str, res: dict[str, Any], lines: list[str]) -> None:
    """OUT.json and OUT.md of a small benchmark (engine_overhead.py, sampling_ops.py), and the table printed."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out + ".json").write_text(json.dumps(res, indent=1))
    Path(out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


class ForwardTimer:
    """Wraps the cache views' `feed` (eager and fast) to record (start, seconds, tokens fed, all branch tokens?,
    cache length)."""

    VIEWS = (DynamicKV, Slots)

    def __init__(self, device: str):
        self.device = device
        self.records: list[tuple[float, float, int, bool, int]] = []
        self._orig: list[Callable[..., torch.Tensor]] = []

    def __enter__(self) -> ForwardTimer:
        timer = self
        for view in self.VIEWS:
            orig = view.feed
            self._orig.append(orig)

            def feed(kv: Any, ids: list[int], pos: list[int], grp: list[int], br: list[int], rows: Any = None,
                     _orig: Callable[..., torch.Tensor] = orig) -> torch.Tensor:
                sync(timer.device)
                t0 = time.perf_counter()
                out = _orig(kv, ids, pos, grp, br, rows)
                sync(timer.device)
                timer.records.append((t0, time.perf_counter() - t0, len(ids), all(g != MAIN for g in grp),
                                      kv.length))
                return out

            view.feed = feed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        for view, orig in zip(self.VIEWS, self._orig, strict=True):
            view.feed = orig  # type: ignore[method-assign]
        self._orig = []

    def steps(self, n: int, parallel: bool) -> tuple[list[float], list[float], list[int]]:
        """(forward s, whole step s, cache length) of every step that fed exactly n tokens of the given kind."""
        fwd, step, ctx = [], [], []
        recs = self.records
        for i, (t0, sec, k, par, cache) in enumerate(recs[:-1]):  # one timer per run: the next record is ours
            if k == n and par == parallel and i > 0:  # record 0 is the prompt prefill
                fwd.append(sec)
                step.append(recs[i + 1][0] - t0)
                ctx.append(cache)
        return fwd, step, ctx


def titles_for(tok: Any, n: int) -> list[str]:
    """n distinct titles of one token length each, so every branch has the same prefix and ends together."""
    by_len: dict[int, list[str]] = {}
    for i in range(400):
        t = f"Topic {chr(65 + i)}" if i < 26 else f"Topic {i}"
        by_len.setdefault(len(text_ids(tok, f"{t}:")), []).append(t)
    out = max(by_len.values(), key=len)[:n]
    if len(out) < n:
        raise SystemExit(f"cannot find {n} titles of equal token length")
    return out


def forced_group(eng: HybridEngine, titles: list[str]) -> list[int]:
    c = eng.ctrl
    ids: list[int] = [*text_ids(eng.tokenizer, "Here is the plan.\n")]
    for t in titles:
        ids += [c.title, *text_ids(eng.tokenizer, t), c.title_end]
    return [*ids, c.para]


ENGINES = {"eager": ("eager", False), "fast": ("fast", False), "fast-compiled": ("fast", True)}


def make_engine(model: Any, tok: Any, name: str) -> HybridEngine:
    if name not in ENGINES:
        raise SystemExit(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")
    engine, compiled = ENGINES[name]
    eng = HybridEngine(model, tok, engine=engine, compile=compiled)
    eng.name = name  # type: ignore[attr-defined]
    return eng


def compile_report(eng: HybridEngine) -> dict[str, Any]:
    """What compiling and capturing cost this engine (seconds per shape / bucket), and whether compiling failed."""
    kv = eng._static
    if kv is None:
        return {}
    out: dict[str, Any] = {"capture_s": dict(kv.capture_seconds)}
    if kv.compiled is not None:
        out.update(compile_s=dict(kv.compiled.seconds), compile_error=kv.compiled.error, mode=kv.compiled.mode,
                   shapes=kv.compiled.shapes, cache_dir=kv.compiled.cache_dir)
    return out


# ------------------------------------------------------------------------------------------ benchmarks


def bench_branches(eng: HybridEngine, args: argparse.Namespace) -> list[dict[str, Any]]:
    prompt = eng.prompt_ids(args.prompt)
    fwd: dict[int, list[float]] = {n: [] for n in args.branches}
    step: dict[int, list[float]] = {n: [] for n in args.branches}
    ctx: dict[int, list[int]] = {n: [] for n in args.branches}
    # Round-robin over N inside each repeat: a burst of load from elsewhere hits every N, not one of them.
    for rep in range(args.warmup + args.repeats):
        for n in args.branches:
            with ForwardTimer(args.device) as timer:
                if n == 1:
                    eng.generate(prompt, mode="serial", limits=Limits(max_new_tokens=args.branch_tokens + 1))
                else:
                    titles = titles_for(eng.tokenizer, n)
                    forced = forced_group(eng, titles)
                    prefix = 1 + len(text_ids(eng.tokenizer, f"{titles[0]}:"))
                    cap = prefix + args.branch_tokens + 1  # prefix + body steps + <|/branch|>
                    lim = Limits(max_new_tokens=len(forced) + n * cap + 1, max_branches=n, max_branch_tokens=cap,
                                 max_groups=1)
                    if len(prompt) + len(forced) + n * cap + 2 > eng.context:
                        raise SystemExit(f"{n} branches of {cap} tokens do not fit the model's {eng.context} "
                                         "positions: lower --branch-tokens or --branches")
                    g = eng.generate(prompt, answer_prefix=forced, limits=lim)
                    assert g.stats.branches == [n], g.stats.branches
            if rep >= args.warmup:
                f, s, c = timer.steps(n, parallel=n > 1)
                fwd[n] += f
                step[n] += s
                ctx[n] += c
        print(f"  {eng.name} branches: run {rep + 1}/{args.warmup + args.repeats} done", file=sys.stderr,
              flush=True)
    rows: list[dict[str, Any]] = []
    for n in args.branches:
        row = {"branches": n, "forward_ms": 1e3 * statistics.median(fwd[n]),
               "step_ms": 1e3 * statistics.median(step[n]), "steps": len(step[n]),
               "context": round(statistics.mean(ctx[n]))}
        row["tok_s"] = n * 1e3 / row["step_ms"]
        rows.append(row)
        print(f"  {eng.name} branches {n:>2}: forward {row['forward_ms']:7.2f} ms  step {row['step_ms']:7.2f} ms"
              f"  ({row['steps']} steps)", file=sys.stderr, flush=True)
    base = rows[0]["step_ms"]
    for r in rows:
        r["step_vs_first"] = r["step_ms"] / base
    return rows


def bench_serial(engines: dict[str, HybridEngine], args: argparse.Namespace) -> dict[str, Any]:
    from transformers import GenerationConfig

    first = next(iter(engines.values()))
    model, tok = first.model, first.tokenizer
    prompt = first.prompt_ids(args.prompt)
    t = args.new_tokens
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    cfg = GenerationConfig(do_sample=False, max_new_tokens=t, min_new_tokens=t, eos_token_id=None, pad_token_id=pad)
    inp = torch.tensor([prompt], device=first.device)

    def timed(fn: Callable[[], list[int]]) -> tuple[float, list[int]]:
        sync(args.device)
        t0 = time.perf_counter()
        ids = fn()
        sync(args.device)
        return time.perf_counter() - t0, ids

    def hf() -> list[int]:
        with torch.inference_mode():
            return model.generate(inp, generation_config=cfg)[0, len(prompt):].tolist()

    def hf_static() -> list[int]:
        with torch.inference_mode():
            return model.generate(inp, generation_config=cfg, cache_implementation="static")[0, len(prompt):].tolist()

    runs: dict[str, Callable[[], list[int]]] = {"hf_generate": hf, "hf_static": hf_static}
    for name, eng in engines.items():
        runs[name] = lambda eng=eng: eng.generate(prompt, mode="serial", limits=Limits(max_new_tokens=t)).answer_ids
    secs: dict[str, list[float]] = {k: [] for k in runs}
    first_s: dict[str, float] = {}
    ids: dict[str, list[int]] = {}
    errors: dict[str, str] = {}
    same = True
    for rep in range(args.warmup + args.serial_repeats):
        # Rotate which goes first so drift (thermal, caches) does not favour one side.
        names = [k for k in runs if k not in errors]
        names = names[rep % len(names):] + names[: rep % len(names)]
        for k in names:
            try:
                sec, got = timed(runs[k])
            except Exception as err:  # HF's static path may fail to compile: keep the other columns
                errors[k] = f"{type(err).__name__}: {err}"[:2000]
                print(f"  serial: {k} failed: {errors[k][:300]}", file=sys.stderr, flush=True)
                continue
            first_s.setdefault(k, round(sec, 3))
            same = same and ids.setdefault(k, got) == got
            if rep >= args.warmup:
                secs[k].append(sec)
    ok = [k for k in runs if secs[k]]
    res: dict[str, Any] = {"new_tokens": t, "prompt_tokens": len(prompt), "runs_s": {}, "tok_s": {},
                           "first_run_s": first_s, "errors": errors,
                           "hf_static_compiled": first.device.type in ("cuda", "xpu")}  # HF compiles there
    for k in ok:
        res["runs_s"][k] = [round(x, 4) for x in secs[k]]
        res["tok_s"][k] = t / statistics.median(secs[k])
    for key, base in (("over_hf", "hf_generate"), ("over_hf_static", "hf_static")):
        res[key] = {k: res["tok_s"][k] / res["tok_s"][base] for k in engines if k in ok} if base in ok else {}
    res["same_tokens"] = same and all(ids[k] == ids["hf_generate"] for k in ok)
    res["first_divergence"] = {k: next((i for i, (a, b) in enumerate(zip(ids[k], ids["hf_generate"], strict=True))
                                        if a != b), None) for k in engines if k in ok}
    print("  serial: " + ", ".join(f"{k} {v:.1f} tok/s" for k, v in res["tok_s"].items()), file=sys.stderr,
          flush=True)
    return res


def copy_bandwidth(device: str, mib: int = 1024) -> float:
    """Bytes per second a device-to-device copy moves (read + write counted), median of 5."""
    x = torch.empty(mib << 20, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    secs = []
    for _ in range(6):
        sync(device)
        t0 = time.perf_counter()
        y.copy_(x)
        sync(device)
        secs.append(time.perf_counter() - t0)
    return 2 * x.numel() / statistics.median(secs[1:])


def bandwidth_floor(engines: dict[str, HybridEngine], serial: dict[str, Any], branch_steps: dict[str, Any],
                    args: argparse.Namespace) -> dict[str, Any]:
    """What one serial step must read (weights once, plus the keys/values it attends over) at copy speed."""
    eng = next(iter(engines.values()))
    model = eng.model
    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # tied matrices counted once
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_per_slot = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head * next(model.parameters()).element_size()
    bw = copy_bandwidth(args.device)
    out: dict[str, Any] = {"weight_bytes": weights, "kv_bytes_per_slot": kv_per_slot, "copy_bytes_per_s": bw,
                           "engines": {}}
    for name, e in engines.items():
        if not branch_steps.get(name):
            continue
        # The eager engine attends over the filled slots; the fast one over its whole preallocated capacity
        # on a GPU (static graph shapes) and over the filled slots on a CPU.
        slots = serial["prompt_tokens"] + serial["new_tokens"] / 2
        if e._static is not None and e._static.bucketed:
            slots = e._static.capacity
        floor_s = (weights + kv_per_slot * slots) / bw
        step_s = 1e-3 * branch_steps[name][0]["step_ms"]
        out["engines"][name] = {"slots_read": round(slots), "floor_ms": 1e3 * floor_s, "step_ms": 1e3 * step_s,
                                "share_of_floor": floor_s / step_s}
    return out


# ------------------------------------------------------------------------------------------ report


def summary(res: dict[str, Any]) -> dict[str, Any]:
    """Per engine: serial tok/s, its ratio to HF generate (dynamic and static cache), and the cost of a step with
    the most live branches measured against a serial step (the issue #19 targets: >= 1.5x HF static, <= 1.15x)."""
    s, out = res["serial"], {}
    for name, rows in res["branch_steps"].items():
        row: dict[str, Any] = {"serial_tok_s": s["tok_s"].get(name), "over_hf": s["over_hf"].get(name),
                               "over_hf_static": s["over_hf_static"].get(name)}
        if rows:
            row[f"step{rows[-1]['branches']}_vs_serial"] = rows[-1]["step_vs_first"]
        out[name] = row
    return out


def command() -> str:
    """The exact command line, with the environment variables that change what runs."""
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in ("ASPD_CACHE", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")
           if k in os.environ]
    return " ".join([*env, "python", *map(shlex.quote, sys.argv)])


def markdown(res: dict[str, Any]) -> str:
    m, s, bw = res["machine"], res["serial"], res["bandwidth"]
    hw = m.get("gpu") or f"{m['cpu']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads)"
    lines = [
        f"# Engine speed: {res['model']} on {res['device']} ({res['dtype']})",
        "",
        f"- command: `{res['command']}`",
        f"- machine: {hw}; {m['platform']}; 1-min load average {m['load_avg_1m']['start']} at start, "
        f"{m['load_avg_1m']['end']} at end",
        f"- torch {res['versions']['torch']}, transformers {res['versions']['transformers']}, "
        f"python {m['python']}; date {res['date']}",
        "",
        f"## Step time vs live branches ({res['settings']['branch_tokens']} body steps per branch, "
        f"{res['settings']['repeats']} runs, medians)",
        "",
        "N = 1 is the serial step; N >= 2 are steps of a real group forced via `answer_prefix`. forward = "
        "the cache view's `feed` (cache write, mask, model); step = forward start to next forward start (sampling included).",
        "",
        "| engine | live branches | forward ms | step ms | step vs N=1 | tokens/s | steps | mean context |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in res["branch_steps"].items():
        for r in rows:
            lines.append(f"| {name} | {r['branches']} | {r['forward_ms']:.2f} | {r['step_ms']:.2f} | "
                         f"{r['step_vs_first']:.2f}x | {r['tok_s']:.1f} | {r['steps']} | {r['context']} |")
    lines += [
        "",
        f"## Serial decoding ({s['new_tokens']} new tokens, prompt {s['prompt_tokens']} tokens, "
        f"{len(s['runs_s']['hf_generate'])} interleaved runs each, prefill included)",
        "",
        f"`hf_static` is `generate(cache_implementation=\"static\")`"
        f"{', compiled by HF (CUDA graphs)' if s.get('hf_static_compiled') else ' (HF compiles it on CUDA only)'}; "
        "the first run pays compiling and capturing.",
        "",
        "| | tokens/s (median) | vs HF generate | vs HF static | first token differing from HF | first run s | "
        "runs (s) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    ratio = lambda d, k: f"{d[k]:.2f}x" if k in d else "-"  # noqa: E731
    for k, v in s["tok_s"].items():
        div = s["first_divergence"].get(k, None) if k in s["first_divergence"] else "-"
        lines.append(f"| {k} | {v:.1f} | {ratio(s['over_hf'], k)} | {ratio(s['over_hf_static'], k)} | "
                     f"{'none' if div is None else div} | {s['first_run_s'].get(k, '-')} | "
                     f"{', '.join(map(str, s['runs_s'][k]))} |")
    for k, err in s.get("errors", {}).items():
        lines.append(f"| {k} | failed: {err[:200]} | | | | | |")
    lines += [
        "",
        "## Summary",
        "",
        "| engine | serial tok/s | vs HF static | largest step vs serial step |",
        "|---|---:|---:|---:|",
    ]
    for k, v in res["summary"].items():
        big = next((f"{x:.2f}x ({n.removesuffix('_vs_serial')})" for n, x in v.items() if n.endswith("_vs_serial")),
                   "-")
        tps = f"{v['serial_tok_s']:.1f}" if v["serial_tok_s"] else "-"
        vs = f"{v['over_hf_static']:.2f}x" if v["over_hf_static"] else "-"
        lines.append(f"| {k} | {tps} | {vs} | {big} |")
    if res.get("compile"):
        lines += ["", "## Compile and capture cost (seconds: compile per step shape k x slots, capture per bucket)", ""]
        for k, v in res["compile"].items():
            lines.append(f"- {k}: {json.dumps(v)}")
    lines += [
        "",
        "## Bandwidth floor of a serial step",
        "",
        f"Weights {bw['weight_bytes'] / 2**20:.1f} MiB, KV {bw['kv_bytes_per_slot'] / 1024:.1f} KiB per slot; "
        f"measured copy bandwidth {bw['copy_bytes_per_s'] / 1e9:.0f} GB/s (read + write).",
        "",
        "| engine | slots read | floor ms | serial step ms | share of floor reached |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, v in bw["engines"].items():
        lines.append(f"| {k} | {v['slots_read']} | {v['floor_ms']:.3f} | {v['step_ms']:.2f} | "
                     f"{100 * v['share_of_floor']:.1f}% |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="registry name, local folder, or 'tiny' (random)")
    p.add_argument("--engines", default="eager,fast,fast-compiled",
                   help=f"engines to time, comma-separated, from {', '.join(ENGINES)} (default: all)")
    p.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    p.add_argument("--branches", default="1,2,4,8,16", help="live branch counts to time (comma-separated)")
    p.add_argument("--branch-tokens", type=int, default=32, help="body steps per branch in (a)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per branch count in (a)")
    p.add_argument("--new-tokens", type=int, default=64, help="new tokens per run in (b)")
    p.add_argument("--serial-repeats", type=int, default=5, help="timed runs per side in (b)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first, in (a) and (b)")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=None,
                   help="output path without extension; writes .json and .md "
                        "(default: benchmarks/results/engine_speed_<device>_<model>)")
    args = p.parse_args(argv)
    from aspd.loading import default_device, resolve_dtype

    args.device = args.device or default_device()
    args.branches = [int(x) for x in args.branches.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype, args.device)
    model, tok = load(args.model, args.device, args.dtype)
    engines = {name: make_engine(model, tok, name) for name in args.engines.split(",")}
    for eng in engines.values():
        eng.eot = set()  # fixed-length runs: no end-of-turn stops a branch or the serial decode early

    name = Path(args.model).name if os.sep in args.model else args.model
    out = Path(args.out) if args.out else Path("benchmarks/results") / f"engine_speed_{args.device.split(':')[0]}_{name}"
    if out.suffix in (".json", ".md"):
        out = out.with_suffix("")
    import transformers

    res: dict[str, Any] = {
        "benchmark": "engine_speed",
        "command": command(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_info(args.device),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "model": args.model, "device": args.device, "dtype": str(dtype).removeprefix("torch."),
        "settings": {k: getattr(args, k) for k in ("engines", "branches", "branch_tokens", "repeats", "new_tokens",
                                                     "serial_repeats", "warmup", "prompt")},
    }
    print(f"engine_speed: {args.model} on {args.device} ({res['dtype']})", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)

    def partial() -> None:  # a run cut short (a time limit) still leaves what it measured
        res["compile"] = {name: compile_report(eng) for name, eng in engines.items() if eng.engine == "fast"}
        Path(f"{out}.json").write_text(json.dumps(res, indent=2) + "\n")

    res["branch_steps"] = {}
    for name, eng in engines.items():
        res["branch_steps"][name] = bench_branches(eng, args)
        partial()
    res["serial"] = bench_serial(engines, args)
    partial()
    res["bandwidth"] = bandwidth_floor(engines, res["serial"], res["branch_steps"], args)
    res["summary"] = summary(res)
    res["total_seconds"] = round(time.perf_counter() - t0, 1)
    # Other processes on the machine skew timings; the 1-minute load average says whether they were around.
    res["machine"]["load_avg_1m"] = {"start": round(load_before[0], 2), "end": round(os.getloadavg()[0], 2)}

    Path(f"{out}.json").write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    Path(f"{out}.md").write_text(md)
    print(md)
    print(f"wrote {out}.json and {out}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
