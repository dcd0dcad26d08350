"""`aspd bench report` on the committed Vicuna runs: one row per model/baseline pair, the figure, judge scores."""

import json
from pathlib import Path

from aspd.bench.merge import points, report
from aspd.cli import main

RUNS = sorted(Path(__file__).parents[1].glob("benchmarks/results/vicuna_*/results.json"))  # committed


def test_report_merges_runs_with_nll_axis(tmp_path, capsys):
    assert RUNS, "the committed Vicuna runs are missing"
    assert main(["bench", "report", *map(str, RUNS), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert (tmp_path / "r" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for path in RUNS:
        results = json.loads(path.read_text())
        for sp in (s for s in results["aggregates"]["speedups"] if s["category"] == "all"):
            assert f"| {sp['model']} | {sp['baseline']} | {sp['pairs']} | {sp['speedup_median']:.2f}x" in md
    assert md in capsys.readouterr().out


def test_judge_scores_take_the_quality_axis(tmp_path):
    results = json.loads(RUNS[0].read_text())
    pair = points(results)[0]
    results["quality"] = {"summary": {pair["model"]: {"mean": 7.25, "scored": 70, "failed": 10},
                                       pair["baseline"]: {"mean": 6.5, "scored": 80, "failed": 0}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    got = points(results)[0]
    assert (got["judge"], got["baseline_judge"]) == (7.25, 6.5)
    md, _ = report([path], tmp_path / "out")
    assert "| 7.25 (6.50) | 70 (10) |" in md.read_text()


def test_report_refuses_other_json(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    assert main(["bench", "report", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
