"""`aspd bench report`: several `bench speed` runs in one Markdown report, with the speedup-against-quality figure.

One point per (run, model under test, baseline): x is the median per-question speedup against that baseline,
y the answer quality of the model. Quality is the mean judge score when the run carries one (`bench quality
--update`), else the per-token NLL under the reference model (`--nll-model`; lower is better, so the axis is
inverted), else the point is left out of the figure (its row still appears in the table).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aspd.bench.report import _f


def points(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per speedup entry of a run's overall aggregates, with the model's quality attached."""
    overall = results["aggregates"]["overall"]
    quality = results.get("quality", {}).get("summary", {})
    bench = Path(str(results["config"].get("bench_file") or results["config"].get("bench"))).stem
    out = []
    for sp in results["aggregates"]["speedups"]:
        if sp["category"] != "all":
            continue
        model = overall[sp["model"]]
        judge = quality.get(sp["model"], {}).get("mean")
        graded = quality.get(sp["model"], {})
        out.append({
            "bench": bench, "model": sp["model"], "baseline": sp["baseline"], "pairs": sp["pairs"],
            "speedup": sp["speedup_median"], "p25": sp["speedup_p25"], "p75": sp["speedup_p75"],
            "ppd": model["ppd"], "dp": model["dp_mean"], "abn": model["abn"], "tps": model["tps_median"],
            "judge": judge, "nll": model.get("nll_mean"),
            "judged": f"{graded['scored']} ({graded['failed']})" if graded else "–",
            "baseline_judge": quality.get(sp["baseline"], {}).get("mean"),
            "baseline_nll": overall[sp["baseline"]].get("nll_mean"),
        })
    return out


def report(paths: Sequence[str | Path], out_dir: str | Path, title: str = "Benchmark report",
           runs: Sequence[dict[str, Any]] | None = None) -> tuple[Path, Path]:
    """Write report.md and report.png into out_dir; returns their paths. `runs`: the files already loaded."""
    if runs is None:
        runs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    rows: list[dict[str, Any]] = []
    for p, results in zip(paths, runs, strict=True):
        rows += [{**r, "source": str(p), "machine": results.get("machine", {}).get("gpu")
                  or results.get("machine", {}).get("cpu", "?")} for r in points(results)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "report.png"
    _figure(rows, png)
    lines = [f"# {title}", "", f"![speedup against quality]({png.name})", "",
             "| bench | machine | model | baseline | pairs | speedup (p25–p75) | PPD | DP | ABN | TPS | judge (base) "
             "| judged (failed) | NLL (base) |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['bench']} | {r['machine']} | {r['model']} | {r['baseline']} | {r['pairs']} | "
            f"{_f(r['speedup'], 2, 'x')} ({_f(r['p25'], 2)}–{_f(r['p75'], 2)}) | {_f(r['ppd'], 2)} | "
            f"{_f(r['dp'], 3)} | {_f(r['abn'], 2)} | {_f(r['tps'])} | {_f(r['judge'], 2)} ({_f(r['baseline_judge'], 2)}) "
            f"| {r['judged']} | {_f(r['nll'], 3)} ({_f(r['baseline_nll'], 3)}) |")
    lines += ["", "Speedup: median over questions of the per-question TPS ratio, model over baseline. Judge: mean "
              "score 1-10 (model, then baseline) over the answers the judge scored; judged: the model's answers "
              "scored, and in brackets those whose replies never held a valid rating. NLL: nats per visible token under each run's reference model, "
              "so compare it within one model family only.", "",
              "Sources: " + ", ".join(f"`{p}`" for p in paths), ""]
    md = out / "report.md"
    md.write_text("\n".join(lines), encoding="utf-8")
    return md, png


def _figure(rows: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = all(r["judge"] is not None for r in rows)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in rows:
        y = r["judge"] if judged else r["nll"]
        if y is None or r["speedup"] is None:
            continue
        ax.errorbar(r["speedup"], y, xerr=[[r["speedup"] - r["p25"]], [r["p75"] - r["speedup"]]], fmt="o",
                    capsize=3, label=f"{r['model']} vs {r['baseline']} ({r['bench']}, {r['machine']})")
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("speedup against baseline (median per question, p25–p75)")
    ax.set_ylabel("judge score (1-10)" if judged else "NLL under reference model (nats/token)")
    if not judged:
        ax.invert_yaxis()  # up is better on both kinds of axis
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
