"""`benchmarks/engine_speed.py` runs end to end on a tiny model (it broke once with a refactor of the engine, and
only a GPU lease found out)."""

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
