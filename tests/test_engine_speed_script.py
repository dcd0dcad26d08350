"""`benchmarks/engine_speed.py` and `engine_overhead.py` run end to end on a tiny model (the first broke once with a
refactor of the engine, and only a GPU lease found out)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_engine_speed_times_real_groups_and_serial_decoding(tmp_path):
    out = tmp_path / "speed"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/engine_speed.py"), "--model", "tiny", "--device", "cpu",
                    "--engines", "eager,fast", "--repeats", "1", "--serial-repeats", "1", "--new-tokens", "8",
                    "--branches", "2,4", "--branch-tokens", "8", "--out", str(out)], check=True, capture_output=True,
                   timeout=600)
    res = json.loads(out.with_suffix(".json").read_text())
    for engine in ("eager", "fast"):
        rows = res["branch_steps"][engine]
        assert [r["branches"] for r in rows] == [2, 4]
        assert all(r["steps"] == 8 and 0 < r["forward_ms"] <= r["step_ms"] for r in rows)  # the timer saw every step
    serial = res["serial"]
    assert not serial["errors"] and serial["same_tokens"]
    assert set(serial["tok_s"]) == {"hf_generate", "hf_static", "eager", "fast"}
    assert (out.with_suffix(".md")).read_text().count("| fast |") >= 2


def test_engine_overhead_times_the_engine_without_the_model(tmp_path):
    out = tmp_path / "overhead"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/engine_overhead.py"), "--model", "tiny", "--branches",
                    "1,3", "--branch-tokens", "4", "--repeats", "1", "--warmup", "0", "--out", str(out)], check=True,
                   capture_output=True, timeout=600)
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["branches"] for r in rows] == [1, 3]
    assert rows[1]["steps"] > 0 and rows[0]["steps"] > 0  # the script exits non-zero if the group does not open
    assert all(r["step_us"] > 0 for r in rows) and rows[1]["serial_step_us"] > 0


def test_engine_speed_says_when_the_groups_do_not_fit_the_model(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks/engine_speed.py"), "--model", "tiny", "--device",
                          "cpu", "--engines", "fast", "--branches", "16", "--out", str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode != 0 and "do not fit the model's 512 positions" in run.stderr
    assert "Traceback" not in run.stderr
