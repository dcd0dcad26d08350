"""The tables of docs/results/data.md, from the committed summaries of issue 17's data (and samples, if given).

Usage: python scripts/recipe/data_report.py [--transform FULL_TRANSFORM.jsonl] [--judged JUDGED.jsonl [--judged-hours H]] > tables.md
Reads data/prompts/reports/*.json and data/teacher/* (judged_rules_likelihood.json: `judged_summary` below). With --transform (the full `aspd transform`
output, candidates included), it also draws ten accepted and ten rejected samples (seed 0) with their reasons;
--judged adds samples the likelihood judge turned back.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
from pathlib import Path

from aspd.jsonl import iter_jsonl

ROOT = Path(__file__).resolve().parents[2]


def rows(path: Path | str):
    yield from (obj for _, obj in iter_jsonl(path))


def table(head: list[str], body: list[list[object]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(f"{c:,}" if isinstance(c, int) else str(c) for c in r) + " |" for r in body]
    return "\n".join(out)


def prompts_section() -> str:
    rep = ROOT / "data/prompts/reports"
    merge = json.loads((rep / "prompts_merge.json").read_text())
    collect = json.loads((rep / "prompts_collect.json").read_text())
    decon = json.loads((rep / "prompts_decontam.json").read_text())
    shipped = list(rows(ROOT / "data/teacher/prompts.jsonl.gz"))
    by_src = collections.Counter(r["source"] for r in shipped)
    parts = ["### Prompts by source", ""]
    body = [[s, v["in"], v.get("exact_duplicate", 0), v.get("near_duplicate", 0), v["kept"], by_src.get(s, 0)]
            for s, v in sorted(merge["by_source"].items(), key=lambda kv: -kv[1]["kept"])]
    body.append(["**all**", merge["records_in"], merge["removed"]["exact"], merge["removed"]["near"], merge["kept"],
                 len(shipped)])
    parts.append(table(["source", "in", "exact dup.", "near dup.", "kept", "shipped (licence)"], body))
    cats = collections.Counter(r.get("category", "?") for r in shipped)
    multi = collections.Counter(r.get("multipart") for r in shipped if r["source"] == "aspd-synth")
    parts += ["", "### Shipped prompts by category", "",
              table(["category", "prompts"], [[c, n] for c, n in cats.most_common()]),
              "", f"Teacher-written prompts inviting a multi-part answer: {multi.get(True, 0):,} of "
              f"{multi.get(True, 0) + multi.get(False, 0):,}.", "",
              "### Teacher-written prompts: what `aspd prompts collect` kept", "",
              table(["replies", "kept", *collect["dropped"]],
                    [[collect["replies"], collect["kept"], *collect["dropped"].values()]]), "",
              "### Decontamination", "",
              f"Checked against {sum(decon['bench_items'].values()):,} bench items "
              f"({', '.join(f'{Path(k).name}: {v}' for k, v in decon['bench_items'].items())}); rules: "
              f"{json.dumps(decon['rules'])}. Removed {decon['removed']} prompt(s):", ""]
    parts.append(table(["prompt id", "bench id", "rule", "score"],
                       [[h["id"], h["bench_id"], h["rule"], h["score"]] for h in decon["hits"]]))
    return "\n".join(parts)


def answers_section() -> str:
    runs = json.loads((ROOT / "data/teacher/answers_runs.json").read_text())
    body = []
    for what, key in (("teacher writes questions", "synth"), ("teacher answers", "answers"), ("span replies", "spans")):
        for r in runs.get(key, []):
            gpu = f", GPU {r['gpu']}" if "gpu" in r else ""  # lease 7 ran one call per GPU at once
            body.append([f"{what} (lease {r['lease']}{gpu})", r["engine"], r["answered"], r.get("kept", "-"),
                         r.get("tokens", "-"), r["seconds"], r.get("tokens_per_second") or "-"])
    drops = collections.Counter()
    for r in [*runs["answers"], runs.get("refilter", {"dropped": {}})]:
        drops.update(r["dropped"])
    shipped = list(rows(ROOT / "data/teacher/answers_qwen2.5-coder-1.5b.jsonl.gz"))
    words = sorted(len(r["answer"].split()) for r in shipped)
    return "\n".join([
        table(["GPU call", "engine", "answered", "kept", "new tokens", "seconds", "tokens/s"], body), "",
        f"Dropped answers: {dict(drops)}. Shipped: {len(shipped):,} answers (redistributable prompts only); "
        f"words per answer: median {words[len(words) // 2]}, p90 {words[int(len(words) * 0.9)]}; "
        f"{sum(w >= 100 for w in words):,} have 100 words or more."])


def transform_section(summary: Path, title: str) -> str:
    s = json.loads(summary.read_text())
    checks = s.get("checks", {})
    out = [f"### {title}", "",
           table(["samples", "parallel", "PPD", "DP (all)", "DP (parallel samples)", "ABN", "groups", "branches"],
                 [[s["samples"], s["parallel_samples"], round(s["ppd"]["after"], 3), round(s["dp"]["after"], 3),
                   round(s["dp"].get("parallel_samples_mean", 0.0), 3), round(s["abn"]["after"], 2),
                   s["groups"]["in_output"], s["groups"]["branches_in_output"]]]), "",
           "Candidates through each stage: " + ", ".join(
               f"{k} {v['passed']:,}/{v['ran']:,}" for k, v in checks.items()) + "; "
           + ", ".join(f"{k} {v:,}" for k, v in s["acceptance"].items()) + "; drops "
           + ", ".join(f"{k} {v:,}" for k, v in s["drops"].items()) + "."]
    if s.get("by_source"):  # which rewriter proposed what, and whose candidate each parallel sample kept
        out += ["", table(["rewriter", "candidates", "passed checks", "passed votes", "selected"],
                          [[k, v["candidates"], v["passed_checks"], v["passed_answer"], v["selected"]]
                           for k, v in s["by_source"].items()])]
    return "\n".join(out)


def _block(text: str) -> str:
    return "````\n" + text.rstrip() + "\n````"


def examples(path: str, judged: str | None) -> str:
    rs = list(rows(path))
    rng = random.Random(0)
    acc = rng.sample([r for r in rs if r["parallel"]], 10)
    rej = rng.sample([r for r in rs if not r["parallel"]], 10 if judged is None else 7)
    if judged is not None:
        turned = [r for r in rows(judged) if not r["parallel"]]
        rej += rng.sample(turned, min(3, len(turned)))
    reasons = collections.Counter(
        re.sub(r"\d+", "N", re.sub(r"title (['\"]).*?\1 ", "title T ", c.get("reason") or "?")).split(";")[0].split(" (")[0]
        for r in rs if not r["parallel"] for c in r["candidates"] if c["source"] == "spans")
    out = ["### Why span replies were turned down (samples left serial)", "",
           table(["reason (first one of the reply)", "replies"], [[k, v] for k, v in reasons.most_common()]), "",
           "### Ten accepted samples (random, seed 0)", ""]
    for r in acc:
        out += [f"<details><summary>{r['id']}: {r['prompt'][:90]!r}</summary>", "", _block(r["markup"]), "",
                "</details>", ""]
    out += ["### Ten rejected samples (random, seed 0) and why", ""]
    for r in rej:
        reasons = "; ".join(sorted({c.get("reason") or c.get("raw", "")[:80] for c in r["candidates"]}))
        out += [f"<details><summary>{r['id']}: {reasons}</summary>", "", f"Prompt: {r['prompt'][:300]!r}", "",
                _block(r["answer"]), ""]
        for c in r["candidates"]:
            if c.get("markup") or (c.get("raw") or "").startswith("<"):
                out += [f"Candidate `{c['source']}` ({c.get('reason')}):", "", _block(c.get("markup") or c["raw"]), ""]
        out += ["</details>", ""]
    return "\n".join(out)


def judged_summary(path: str, hours: float) -> dict[str, object]:
    """Counts over a (possibly unfinished) likelihood-judged transform output; `hours` of wall time it took."""
    rs = list(rows(path))
    dp = [r["stats"]["dp"] for r in rs if r["parallel"]]
    return {"samples": len(rs), "parallel": sum(r["parallel"] for r in rs),
            "groups_proposed": sum(r["stats"]["groups_proposed"] for r in rs),
            "groups_kept": sum(r["stats"]["groups"] for r in rs),
            "dp_parallel": round(sum(dp) / len(dp), 3) if dp else 0.0, "samples_per_hour": round(len(rs) / hours)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--transform", default=None)
    ap.add_argument("--judged", default=None)
    ap.add_argument("--judged-hours", type=float, default=None,
                    help="with --judged: (re)write data/teacher/judged_rules_likelihood.json from it, the run having "
                         "taken this many hours")
    args = ap.parse_args()
    judged = ROOT / "data/teacher/judged_rules_likelihood.json"
    if args.judged and args.judged_hours:
        judged.write_text(json.dumps(judged_summary(args.judged, args.judged_hours), indent=1) + "\n")
    parts = ["## Prompts", "", prompts_section(), "", "## Teacher answers", "", answers_section(), "",
             "## Rewriters", "", transform_section(ROOT / "data/teacher/transform.summary.json",
                                                    "Rules and the span rewriter, no judge (all answers)")]
    if judged.exists():
        j = json.loads(judged.read_text())
        parts += ["", "### Rules + the likelihood judge under SmolLM2-135M (the first rule-parallel samples)", "",
                  table(["samples judged", "still parallel", "groups proposed", "groups kept",
                         "DP (parallel samples)", "samples/hour (CPU)"],
                        [[j["samples"], j["parallel"], j["groups_proposed"], j["groups_kept"], j["dp_parallel"],
                          j["samples_per_hour"]]])]
    if args.transform:
        parts += ["", "## Samples", "", examples(args.transform, args.judged)]
    print("\n".join(parts))


if __name__ == "__main__":
    main()
