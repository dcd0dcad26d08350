"""benchmarks/load_test.py in process: the server's batching model thread under concurrent clients."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from aspd.testing import tiny_model, tiny_tokenizer
from aspd.tokens import add_control_tokens

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "load_test.py"


def load_script():
    spec = importlib.util.spec_from_file_location("load_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["load_test"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_inprocess_levels_batch_requests_and_count_503s(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    add_control_tokens(tok, model)
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    lt = load_script()
    out = tmp_path / "lt"
    # 1 + 2 may run or wait: at 5 clients some get 503, and nothing else fails.
    rc = lt.main(["--inprocess", str(folder), "--device", "cpu", "--clients", "1,5", "--rounds", "1",
                  "--max-tokens", "6", "--max-batch", "2", "--max-queue", "1", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.with_suffix(".json").read_text())
    one, five = (lv["summary"] for lv in report["levels"])
    assert (one["ok"], one["errors"]) == (1, 0)
    assert five["requests"] == 5 and five["other_errors"] == 0 and five["busy_503"] >= 1 and five["ok"] >= 3
    assert all(r["completion_tokens"] == 6 and r["ttft"] is not None
               for lv in report["levels"] for r in lv["requests"] if r["ok"])
    assert "| 5 | 5 |" in out.with_suffix(".md").read_text()
