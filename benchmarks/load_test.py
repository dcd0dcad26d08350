"""Load test for `aspd serve`: N concurrent streaming chat clients, at one or several client counts.

Each client sends its requests one after another (a closed loop). Reports per client count: throughput
(requests/s, completion tokens/s), latency and time to first token (p50/p99) and errors (503s counted apart),
prints a table, and writes JSON (config, machine, model, every level's summary and requests) plus Markdown.

Two ways to drive the server:

- over HTTP against a running `aspd serve` (loopback only):

      python benchmarks/load_test.py --url http://127.0.0.1:8000 --clients 1,8,32 --rounds 2 --max-tokens 64 \\
          --out benchmarks/results/load_test_cpu_smollm2-135m

- in process (`--inprocess MODEL`): the server's own model thread and batching (`aspd.serve.worker.Worker`:
  admission, the bounded queue and its 503s, streaming, stop strings) with the HTTP layer left out, so it needs
  only torch and transformers (no FastAPI, uvicorn or httpx):

      python benchmarks/load_test.py --inprocess smollm2-135m --device cuda --clients 1,8,32,128 --max-batch 128

`--max-batch 1` gives the server of before continuous batching (one request at a time) for comparison.
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
    status: int  # HTTP status (in process: 200, or 503 when the queue was full); 0 when no response came
    ok: bool
    start: float  # seconds since the level began
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


# ---------------------------------------------------------------------------------------------- drivers


class HTTPDriver:
    """Streaming chat requests to a running server."""

    def __init__(self, args: argparse.Namespace):
        import httpx

        self.httpx = httpx
        self.args = args
        self.client = httpx.AsyncClient(base_url=args.url.rstrip("/"), timeout=args.timeout,
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))

    async def describe(self) -> tuple[dict[str, Any], dict[str, Any]]:
        models = (await self.client.get("/v1/models")).json()["data"]
        card = models[0] if self.args.model is None else next(m for m in models if m["id"] == self.args.model)
        self.model = card["id"]
        return card, (await self.client.get("/health")).json()

    async def close(self) -> None:
        await self.client.aclose()

    async def one(self, index: int, who: int, t0: float, max_tokens: int | None = None) -> Record:
        args = self.args
        body: dict[str, Any] = {
            "model": self.model, "stream": True, "max_tokens": max_tokens or args.max_tokens,
            "temperature": args.temperature, "seed": index,
            "messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}], "aspd": {"mode": args.mode},
        }
        start = time.perf_counter()
        ttft = None
        usage: dict[str, Any] = {}
        finish = None
        engine_tps = None
        status = 0
        try:
            async with self.client.stream("POST", "/v1/chat/completions", json=body, timeout=args.timeout) as r:
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
        except (self.httpx.HTTPError, RuntimeError, ValueError) as e:
            return Record(index, who, status, False, start - t0, time.perf_counter() - start, ttft, 0, 0, None,
                          None, f"{type(e).__name__}: {e}")
        ok = finish is not None and bool(usage)
        return Record(index, who, status, ok, start - t0, time.perf_counter() - start, ttft,
                      int(usage.get("completion_tokens", 0)), int(usage.get("prompt_tokens", 0)), finish,
                      engine_tps, None if ok else "stream ended without a final chunk")


class InProcessDriver:
    """The server's model thread (`Worker`: batching, the bounded queue, streaming) without the HTTP layer."""

    def __init__(self, args: argparse.Namespace):
        from aspd.engine.core import HybridEngine
        from aspd.loading import model_folder
        from aspd.serve.worker import Worker

        self.args = args
        self.folder = model_folder(args.inprocess)
        self.engine = HybridEngine.from_pretrained(str(self.folder), device=args.device, dtype=args.dtype,
                                                   engine=args.engine)
        # Prompts are tokenized here, before the model thread owns the tokenizer.
        self.prompts = [self.engine.prompt_ids(p) for p in PROMPTS]
        self.worker = Worker(self.engine, args.max_queue, max_batch=args.max_batch, max_slots=args.max_cache_tokens)
        self.worker.start()
        self.warm_up()

    def warm_up(self) -> None:
        """What `aspd serve` does before it listens (on a GPU, every bucket of the whole cache compiled and
        captured), then one short answer, so that no one-time setup is timed: without the first, the first level
        that needs a new bucket paid for capturing it."""
        from aspd.engine.types import Limits

        if self.engine.device.type == "cuda":
            self.engine.warm(self.args.max_cache_tokens)
        self.engine.generate(self.prompts[0], limits=Limits(max_new_tokens=8))

    async def describe(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return ({"id": self.args.inprocess, "object": "model", "owned_by": "aspd", "in_process": True,
                 "max_model_len": getattr(self.engine, "context", None)},
                {"status": "ok", "running": self.worker.running, "waiting": self.worker.waiting,
                 "max_batch": self.worker.max_batch, "max_queue": self.worker.max_queue})

    async def close(self) -> None:
        pass

    async def one(self, index: int, who: int, t0: float, max_tokens: int | None = None) -> Record:
        from aspd.engine.sampling import SamplingParams
        from aspd.engine.types import Limits
        from aspd.serve.worker import GenRequest, Job

        args = self.args
        ids = self.prompts[index % len(self.prompts)]
        req = GenRequest(ids, args.mode, SamplingParams(temperature=args.temperature, seed=index),
                         Limits(max_new_tokens=max_tokens or args.max_tokens), stream=True,
                         request_id=f"load-{index}")
        job = Job(req, asyncio.get_running_loop())
        start = time.perf_counter()
        if not self.worker.submit(job):
            return Record(index, who, 503, False, start - t0, time.perf_counter() - start, None, 0, 0, None, None,
                          "HTTP 503: queue full")
        ttft = None
        while True:
            kind, value = await job.items.get()
            if kind == "chunk":
                if ttft is None and value.content:
                    ttft = time.perf_counter() - start
                continue
            latency = time.perf_counter() - start
            if kind != "done":
                return Record(index, who, 500, False, start - t0, latency, ttft, 0, len(ids), None, None,
                              f"{kind}: {value}")
            return Record(index, who, 200, True, start - t0, latency, ttft, value.completion_tokens,
                          value.prompt_tokens, value.finish_reason, value.stats.get("tps"))


async def run_level(driver: HTTPDriver | InProcessDriver, clients: int, total: int, duration: float,
                    max_tokens: int | None = None) -> tuple[list[Record], float]:
    next_index = 0
    records: list[Record] = []
    t0 = time.perf_counter()
    deadline = t0 + duration

    async def client_loop(who: int) -> None:
        nonlocal next_index
        while next_index < total and time.perf_counter() < deadline:
            i = next_index
            next_index += 1
            records.append(await driver.one(i, who, t0, max_tokens))

    await asyncio.gather(*(client_loop(c) for c in range(clients)))
    return sorted(records, key=lambda r: r.index), time.perf_counter() - t0


async def run(args: argparse.Namespace, levels: list[int]) -> dict[str, Any]:
    driver = InProcessDriver(args) if args.inprocess else HTTPDriver(args)
    try:
        card, health = await driver.describe()
        if args.warmup:  # untimed: the widest level once with short answers (CUDA graphs, cache growth)
            await run_level(driver, max(levels), max(levels), args.duration, max_tokens=8)
        out = []
        for clients in levels:
            total = args.requests or clients * args.rounds
            before = loadavg()
            records, wall = await run_level(driver, clients, total, args.duration)
            summary = summarise(records, wall)
            out.append({"clients": clients, "loadavg_before": before, "loadavg_after": loadavg(),
                        "summary": summary, "requests": [asdict(r) for r in records]})
            print(f"{clients} clients: {summary['ok']}/{summary['requests']} ok, {summary['tokens_per_s']} tok/s",
                  file=sys.stderr, flush=True)
    finally:
        await driver.close()
        if isinstance(driver, InProcessDriver):
            driver.worker.stop()
    return {"model": card, "health_before": health, "levels": out}


# ---------------------------------------------------------------------------------------------- report


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
    busy = errors.get("HTTP 503", 0)
    return {
        "requests": len(records), "ok": len(ok), "errors": len(records) - len(ok), "busy_503": busy,
        "other_errors": len(records) - len(ok) - busy, "error_kinds": errors,
        "wall_s": round(wall, 3), "requests_per_s": round(len(ok) / wall, 3) if wall else None,
        "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 2) if wall else None,
        "latency_p50_s": rnd(percentile(lat, 50)), "latency_p99_s": rnd(percentile(lat, 99)),
        "ttft_p50_s": rnd(percentile(ttft, 50)), "ttft_p99_s": rnd(percentile(ttft, 99)),
        "mean_completion_tokens": round(tokens / len(ok), 1) if ok else None,
        "engine_tps_mean": round(sum(tps) / len(tps), 2) if tps else None,
    }


COLUMNS = [("clients", "clients"), ("requests", "requests"), ("ok", "ok"), ("503", "busy_503"),
           ("other errors", "other_errors"), ("req/s", "requests_per_s"), ("tok/s", "tokens_per_s"),
           ("x 1 client", "speedup"), ("p50 latency s", "latency_p50_s"), ("p99 latency s", "latency_p99_s"),
           ("p50 TTFT s", "ttft_p50_s"), ("p99 TTFT s", "ttft_p99_s")]


def table(levels: list[dict[str, Any]]) -> list[list[str]]:
    base = next((lv["summary"]["tokens_per_s"] for lv in levels if lv["clients"] == 1), None)
    rows = [[h for h, _ in COLUMNS]]
    for lv in levels:
        s = lv["summary"]
        speed = round(s["tokens_per_s"] / base, 2) if base and s["tokens_per_s"] is not None else None
        row = {**s, "clients": lv["clients"], "speedup": speed}
        rows.append(["-" if row.get(k) is None else str(row[k]) for _, k in COLUMNS])
    return rows


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def markdown(report: dict[str, Any], rows: list[list[str]]) -> str:
    cfg, m, mach = report["config"], report["model"], report["machine"]
    how = (f"in process (`aspd.serve.worker.Worker`, no HTTP), max batch {cfg['max_batch']}, max queue "
           f"{cfg['max_queue']}" if cfg["inprocess"] else f"HTTP, server: `{cfg['server_command'] or '(not recorded)'}`")
    lines = [
        f"# Load test: `aspd serve` with {m['id']}",
        "",
        f"- Date (UTC): {report['date']}",
        f"- Command: `{report['command']}`",
        f"- Driver: {how}",
        f"- Model: {m['id']} (context {m.get('max_model_len')}), decoding mode {cfg['mode']}, "
        f"temperature {cfg['temperature']}, max_tokens {cfg['max_tokens']}; each client sends its requests one "
        f"after another",
        f"- Machine: {mach['cpu']} ({mach['cpu_count']} logical CPUs, {mach['memory_gib']} GiB), "
        f"{mach.get('gpu') or 'no GPU'}, {mach['platform']}; torch {mach['torch']}, transformers "
        f"{mach['transformers']}; load average before/after each level: "
        + "; ".join(f"{lv['clients']}: {lv['loadavg_before']} / {lv['loadavg_after']}" for lv in report["levels"]),
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "|".join("---:" for _ in rows[0]) + "|",
        *("| " + " | ".join(r) + " |" for r in rows[1:]),
        "",
        "Errors by kind: " + "; ".join(f"{lv['clients']} clients: {lv['summary']['error_kinds'] or 'none'}"
                                       for lv in report["levels"]) + ".",
        "",
    ]
    if report.get("note"):
        lines += [report["note"], ""]
    return "\n".join(lines)


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server root (loopback only)")
    p.add_argument("--model", default=None, help="HTTP: model id (default: the first one /v1/models lists)")
    p.add_argument("--inprocess", metavar="MODEL", default=None,
                   help="drive the server's batching in this process with this model (registry name or folder) "
                        "instead of over HTTP")
    p.add_argument("--device", default=None, help="in process: cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="in process: auto (bf16 on a capable GPU, else fp32), ...")
    p.add_argument("--engine", default="auto", choices=("auto", "fast", "eager"), help="in process")
    p.add_argument("--max-batch", type=int, default=32, help="in process: requests decoded at once (1: one at a time)")
    p.add_argument("--max-queue", type=int, default=16, help="in process: requests that may wait before 503")
    p.add_argument("--max-cache-tokens", type=int, default=1 << 15, help="in process: cache slots to reserve from")
    p.add_argument("--clients", default="4", help="concurrent streaming clients; several levels comma-separated")
    p.add_argument("--rounds", type=int, default=2, help="requests per client at each level (default 2)")
    p.add_argument("--requests", type=int, default=None, help="total requests per level (overrides --rounds)")
    p.add_argument("--duration", type=float, default=600, help="stop starting new requests after this (s)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--mode", choices=("hybrid", "serial"), default="hybrid")
    p.add_argument("--timeout", type=float, default=600, help="per-request timeout (s)")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="first an untimed round at the widest level with 8-token answers (default on)")
    p.add_argument("--server-command", default=None, help="HTTP: how the server was started, for the report")
    p.add_argument("--note", default=None, help="a sentence for the Markdown report")
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    try:
        levels = [int(x) for x in args.clients.split(",") if x.strip()]
    except ValueError:
        p.error("--clients takes integers, comma-separated (1,8,32)")
    if not levels or not all(1 <= c <= 1024 for c in levels):
        p.error("--clients must be in [1, 1024]")
    if args.rounds < 1 or (args.requests is not None and not 1 <= args.requests <= 100_000):
        p.error("--rounds must be >= 1 and --requests in [1, 100000]")
    if not args.inprocess:
        check_loopback(args.url)

    result = asyncio.run(run(args, levels))
    rows = table(result["levels"])
    print_table(rows)
    device = args.device or ("cuda" if args.inprocess and _cuda() else "cpu")
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": machine_info(device),
        "model": result["model"],
        "server_health_before": result["health_before"],
        "note": args.note,
        "levels": result["levels"],
    }
    if args.out:
        stem = args.out.removesuffix(".json").removesuffix(".md")  # names like qwen2.5-0.5b keep their dots
        js, md = Path(stem + ".json"), Path(stem + ".md")
        js.parent.mkdir(parents=True, exist_ok=True)
        js.write_text(json.dumps(report, indent=2) + "\n")
        md.write_text(markdown(report, rows))
        print(f"wrote {js} and {md}")
    return 0 if all(lv["summary"]["other_errors"] == 0 for lv in result["levels"]) else 1


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
