"""Load test for `aspd serve`: N concurrent streaming chat clients against a running server (loopback only).

Reports throughput (requests/s, completion tokens/s), latency and time to first token (p50/p99) and errors,
prints a table, and writes JSON (config, machine, model, summary, every request) plus a Markdown report.

    python benchmarks/load_test.py --url http://127.0.0.1:8000 --clients 4 --requests 16 --max-tokens 64 \
        --out benchmarks/results/load_test_cpu_smollm2-135m

The server runs one request at a time (no cross-request batching), so with N clients latency grows about N
times while throughput stays that of one stream; the numbers show the queueing, not a batching speedup.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from aspd.bench.report import machine_info

PROMPTS = [
    "Give three tips for staying healthy.",
    "Explain what a hash table is in two sentences.",
    "List the planets of the solar system.",
    "Write a short poem about the sea.",
    "What are the pros and cons of remote work?",
    "How do I make a cup of tea?",
    "Compare Python, Rust and Go in a few lines.",
    "Summarise the water cycle.",
]


@dataclass
class Record:
    index: int
    client: int
    status: int  # HTTP status; 0 when no response came
    ok: bool
    start: float  # seconds since the test began
    latency: float  # request sent -> last byte
    ttft: float | None  # request sent -> first non-empty content delta
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str | None
    engine_tps: float | None  # the server's own tokens/s for this answer (aspd stats)
    error: str | None = None


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    sys.exit(f"load_test: refusing non-loopback URL {url!r} (this tool only loads a local server)")


def percentile(xs: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not xs:
        return None
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


async def one_request(client: httpx.AsyncClient, args: argparse.Namespace, model: str, index: int, who: int,
                      t0: float) -> Record:
    body: dict[str, Any] = {
        "model": model, "stream": True, "max_tokens": args.max_tokens, "temperature": args.temperature,
        "seed": index, "messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
        "aspd": {"mode": args.mode},
    }
    start = time.perf_counter()
    ttft = None
    usage: dict[str, Any] = {}
    finish = None
    engine_tps = None
    status = 0
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body, timeout=args.timeout) as r:
            status = r.status_code
            if status != 200:
                text = (await r.aread()).decode(errors="replace")
                try:
                    msg = json.loads(text)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    msg = text[:200]
                return Record(index, who, status, False, start - t0, time.perf_counter() - start, None, 0, 0,
                              None, None, f"HTTP {status}: {msg}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"].get("message", "stream error"))
                choices = chunk.get("choices") or []
                if choices and ttft is None and choices[0].get("delta", {}).get("content"):
                    ttft = time.perf_counter() - start
                if choices and choices[0].get("finish_reason"):
                    finish = choices[0]["finish_reason"]
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if chunk.get("aspd", {}).get("stats"):
                    engine_tps = chunk["aspd"]["stats"].get("tps")
    except (httpx.HTTPError, RuntimeError, ValueError) as e:
        return Record(index, who, status, False, start - t0, time.perf_counter() - start, ttft, 0, 0, None, None,
                      f"{type(e).__name__}: {e}")
    ok = finish is not None and bool(usage)
    return Record(index, who, status, ok, start - t0, time.perf_counter() - start, ttft,
                  int(usage.get("completion_tokens", 0)), int(usage.get("prompt_tokens", 0)), finish, engine_tps,
                  None if ok else "stream ended without a final chunk")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=args.url.rstrip("/"), timeout=args.timeout) as client:
        models = (await client.get("/v1/models")).json()["data"]
        card = models[0] if args.model is None else next(m for m in models if m["id"] == args.model)
        health = (await client.get("/health")).json()
        next_index = 0
        records: list[Record] = []
        t0 = time.perf_counter()
        deadline = t0 + args.duration

        async def client_loop(who: int) -> None:
            nonlocal next_index
            while next_index < args.requests and time.perf_counter() < deadline:
                i = next_index
                next_index += 1
                records.append(await one_request(client, args, card["id"], i, who, t0))

        await asyncio.gather(*(client_loop(c) for c in range(args.clients)))
        wall = time.perf_counter() - t0
    return {"model": card, "health_before": health, "wall": wall, "records": records}


def summarise(records: list[Record], wall: float) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    tokens = sum(r.completion_tokens for r in ok)
    lat = [r.latency for r in ok]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    tps = [r.engine_tps for r in ok if r.engine_tps is not None]
    errors: dict[str, int] = {}
    for r in records:
        if not r.ok:
            key = f"HTTP {r.status}" if r.status not in (0, 200) else (r.error or "error").split(":")[0]
            errors[key] = errors.get(key, 0) + 1
    rnd = lambda x: None if x is None else round(x, 3)  # noqa: E731
    return {
        "requests": len(records), "ok": len(ok), "errors": len(records) - len(ok), "error_kinds": errors,
        "wall_s": round(wall, 3), "requests_per_s": round(len(ok) / wall, 3) if wall else None,
        "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 2) if wall else None,
        "latency_p50_s": rnd(percentile(lat, 50)), "latency_p99_s": rnd(percentile(lat, 99)),
        "ttft_p50_s": rnd(percentile(ttft, 50)), "ttft_p99_s": rnd(percentile(ttft, 99)),
        "mean_completion_tokens": round(tokens / len(ok), 1) if ok else None,
        "engine_tps_mean": round(sum(tps) / len(tps), 2) if tps else None,
    }


COLUMNS = [("clients", "clients"), ("requests", "requests"), ("ok", "ok"), ("errors", "errors"),
           ("req/s", "requests_per_s"), ("tok/s", "tokens_per_s"), ("p50 latency s", "latency_p50_s"),
           ("p99 latency s", "latency_p99_s"), ("p50 TTFT s", "ttft_p50_s"), ("p99 TTFT s", "ttft_p99_s")]


def table(summary: dict[str, Any], clients: int) -> list[list[str]]:
    row = {**summary, "clients": clients}
    return [[h for h, _ in COLUMNS], ["-" if row.get(k) is None else str(row[k]) for _, k in COLUMNS]]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def markdown(report: dict[str, Any], rows: list[list[str]]) -> str:
    cfg, s, m, mach = report["config"], report["summary"], report["model"], report["machine"]
    lines = [
        f"# Load test: `aspd serve` with {m['id']}",
        "",
        f"- Date (UTC): {report['date']}",
        f"- Command: `{report['command']}`",
        f"- Server: `{cfg['server_command'] or '(not recorded)'}`",
        f"- Model: {m['id']} (context {m.get('max_model_len')}), decoding mode {cfg['mode']}, "
        f"temperature {cfg['temperature']}, max_tokens {cfg['max_tokens']}",
        f"- Machine: {mach['cpu']} ({mach['cpu_count']} logical CPUs, {mach['memory_gib']} GiB), {mach['platform']}; "
        f"load average before/after: {report['loadavg_before']} / {report['loadavg_after']}",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "|".join("---:" for _ in rows[0]) + "|",
        *("| " + " | ".join(r) + " |" for r in rows[1:]),
        "",
        f"Completion tokens: {s['completion_tokens']} in {s['wall_s']} s (mean {s['mean_completion_tokens']} "
        f"per answer); the engine's own decode speed per answer averaged {s['engine_tps_mean']} tok/s.",
        f"Errors: {s['error_kinds'] or 'none'}.",
        "",
        "The server decodes one request at a time on one model thread (FIFO, no cross-request batching): "
        "throughput is that of a single stream, and latency grows with the number of clients queued.",
        "",
    ]
    return "\n".join(lines)


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server root (loopback only)")
    p.add_argument("--model", default=None, help="model id (default: the first one /v1/models lists)")
    p.add_argument("--clients", type=int, default=4, help="concurrent streaming clients")
    p.add_argument("--requests", type=int, default=16, help="total requests (bounded)")
    p.add_argument("--duration", type=float, default=600, help="stop starting new requests after this (s)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--mode", choices=("hybrid", "serial"), default="hybrid")
    p.add_argument("--timeout", type=float, default=600, help="per-request timeout (s)")
    p.add_argument("--server-command", default=None, help="how the server was started, for the report")
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    check_loopback(args.url)
    if not (1 <= args.clients <= 256 and 1 <= args.requests <= 100_000):
        p.error("--clients must be in [1, 256] and --requests in [1, 100000]")

    before = loadavg()
    result = asyncio.run(run(args))
    records: list[Record] = sorted(result["records"], key=lambda r: r.index)
    summary = summarise(records, result["wall"])
    rows = table(summary, args.clients)
    print_table(rows)
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": machine_info("cpu"),
        "loadavg_before": before,
        "loadavg_after": loadavg(),
        "model": result["model"],
        "server_health_before": result["health_before"],
        "summary": summary,
        "requests": [asdict(r) for r in records],
    }
    if args.out:
        stem = args.out.removesuffix(".json").removesuffix(".md")  # names like qwen2.5-0.5b keep their dots
        js, md = Path(stem + ".json"), Path(stem + ".md")
        js.parent.mkdir(parents=True, exist_ok=True)
        js.write_text(json.dumps(report, indent=2) + "\n")
        md.write_text(markdown(report, rows))
        print(f"wrote {js} and {md}")
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
