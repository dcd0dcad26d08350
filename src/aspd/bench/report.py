"""results.json and results.md: settings, machine, every answer, aggregates; a Markdown table for people."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

METRICS_NOTE = (
    "TPS = visible answer tokens / wall-clock seconds (prefill included), median over answers. "
    "P-TPS = branch tokens / parallel-stage seconds, median over answers with a group. DP = parallel / all "
    "sampled tokens, mean over answers. ABN = branches per group, pooled. PPD = share of answers with >= 1 "
    "group. Latency = seconds per answer, median. Speedup = median over questions of the per-question TPS "
    "ratio (model / baseline) [p25, p75]; ratio of medians = median model TPS / median baseline TPS."
)


def machine_info(device: str) -> dict[str, Any]:
    """CPU model, core count, versions, GPU name, date: enough to tell whether two reports are comparable."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal"))
        mem = round(kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "hostname": platform.node(),
        "memory_gib": mem,
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__, "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    if hasattr(os, "getloadavg"):
        info["load_avg_1m_start"] = round(os.getloadavg()[0], 2)
    return info


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed (quoted for a shell), with ASPD_* variables that change what runs."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("ASPD_"))
    cmd = shlex.join(["aspd", *(sys.argv[1:] if argv is None else argv)])
    return f"{env} {cmd}" if env else cmd


def _f(x: float | None, digits: int = 1, suffix: str = "") -> str:
    return "–" if x is None else f"{x:.{digits}f}{suffix}"


def _summary_table(summaries: dict[str, dict[str, Any]], roles: dict[str, str], nll: bool) -> list[str]:
    head = "| model | role | answers | TPS | P-TPS | DP | ABN | PPD | latency s (p25–p75) | truncated |"
    sep = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    if nll:
        head += " NLL mean | NLL median |"
        sep += "---:|---:|"
    lines = [head, sep]
    for lab, s in summaries.items():
        if not s["answers"]:
            continue
        line = (f"| {lab} | {roles.get(lab, '')} | {s['answers']} | {_f(s['tps_median'])} | "
                f"{_f(s['parallel_tps_median'])} | {_f(s['dp_mean'], 3)} | {_f(s['abn'], 2)} | {_f(s['ppd'], 2)} | "
                f"{_f(s['latency_median'], 2)} ({_f(s['latency_p25'], 2)}–{_f(s['latency_p75'], 2)}) | "
                f"{s['truncated']} |")
        if nll:
            line += f" {_f(s.get('nll_mean'), 3)} | {_f(s.get('nll_median'), 3)} |"
        lines.append(line)
    return lines


def _speedup_table(speedups: list[dict[str, Any]]) -> list[str]:
    lines = ["| category | model | baseline | pairs | speedup (median) | p25–p75 | ratio of medians | latency ratio |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for s in speedups:
        lines.append(f"| {s['category']} | {s['model']} | {s['baseline']} | {s['pairs']} | "
                     f"{_f(s['speedup_median'], 2, 'x')} | {_f(s['speedup_p25'], 2)}–{_f(s['speedup_p75'], 2)} | "
                     f"{_f(s['ratio_of_medians'], 2, 'x')} | {_f(s['latency_ratio_median'], 2, 'x')} |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    cfg, m, agg = results["config"], results["machine"], results["aggregates"]
    roles = {x["label"]: x["role"] for x in cfg["models"]}
    nll = any("nll_mean" in s for s in agg["overall"].values())
    hw = m.get("gpu") or f"{m['cpu']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads)"
    out = [
        f"# Speed benchmark: {cfg['bench']}",
        "",
        f"- command: `{cfg['command']}`",
        f"- questions: {cfg['questions']} from `{cfg['bench_file']}`; answers: {len(results['rows'])}",
        f"- machine: {hw}; torch {m['torch']}, transformers {m['transformers']}; {m['date']}",
        f"- device {cfg['device']}, dtype {cfg['dtype']}; sampling {cfg['sampling']}; limits {cfg['limits']}",
    ]
    if cfg.get("nll_model"):
        out.append(f"- NLL under `{cfg['nll_model']}` (nats per visible token; lower = closer to that model)")
    if cfg.get("answer_prefix"):
        out.append(f"- WARNING: hybrid answers were forced to start with `{cfg['answer_prefix']}`; "
                   "their structure is not the model's own")
    out += ["", "## Overall", "", *_summary_table(agg["overall"], roles, nll)]
    overall_sp = [s for s in agg["speedups"] if s["category"] == "all"]
    if overall_sp:
        out += ["", "## Speedup", "", *_speedup_table(overall_sp)]
    if len(agg["by_category"]) > 1:
        out += ["", "## By category"]
        for cat, summaries in agg["by_category"].items():
            out += ["", f"### {cat}", "", *_summary_table(summaries, roles, nll)]
            sp = [s for s in agg["speedups"] if s["category"] == cat]
            if sp:
                out += ["", *_speedup_table(sp)]
    out += ["", f"Definitions: {METRICS_NOTE}", ""]
    return "\n".join(out)


def overview(results: dict[str, Any]) -> str:
    """The overall and speedup tables alone (what the CLI prints)."""
    agg = results["aggregates"]
    roles = {x["label"]: x["role"] for x in results["config"]["models"]}
    nll = any("nll_mean" in s for s in agg["overall"].values())
    lines = _summary_table(agg["overall"], roles, nll)
    sp = [s for s in agg["speedups"] if s["category"] == "all"]
    if sp:
        lines += ["", *_speedup_table(sp)]
    return "\n".join(lines)


def write_results(out_dir: str | Path, results: dict[str, Any]) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "results.json", out / "results.md"
    js.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    md.write_text(markdown(results), encoding="utf-8")
    return js, md
