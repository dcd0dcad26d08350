"""Training on a tiny random Llama: loss falls, LoRA trains only what it should, resume works, bad data errors."""

import json

import pytest
import torch

from aspd.cli import main as cli_main
from aspd.testing import tiny_model, tiny_tokenizer
from aspd.train.data import DataError, read_records
from aspd.train.trainer import ASPD_CONFIG, TrainConfig, train

MARKED = (
    "Here are two tips:\n<branchgroup>\n<branch title=\"Diet\">Eat a balanced diet.</branch>\n"
    "<branch title=\"Sleep\">Sleep well.</branch>\n</branchgroup>\nIn summary, habits matter."
)


@pytest.fixture()
def data_file(tmp_path):
    rows = [
        {"id": f"s{i}", "question": f"Give two tips, please {i}.", "answer": MARKED} for i in range(6)
    ] + [{"id": "m", "messages": [{"role": "user", "content": "Name capitals."},
                                  {"role": "assistant", "content": "Paris is the capital of France."}]}]
    p = tmp_path / "train.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def test_full_finetune_loss_falls(tiny_folder, data_file, tmp_path):
    out = tmp_path / "run"
    m = train(TrainConfig(model=str(tiny_folder), data=str(data_file), output=str(out), max_steps=30,
                          lr=3e-3, batch_size=4, logging_steps=1, warmup_ratio=0.1, save_steps=1000))
    assert m["steps"] == 30
    assert m["last_loss"] < 0.5 * m["first_loss"], m
    meta = json.loads((out / ASPD_CONFIG).read_text())
    assert meta["mask_mode"] == "indep" and meta["pos_mode"] == "same-seq"
    from transformers import AutoTokenizer

    assert "<|para|>" in AutoTokenizer.from_pretrained(out).get_vocab()


def test_lora_trains_adapters_and_new_token_rows_only(tiny_folder, data_file, tmp_path):
    out = tmp_path / "lora"
    m = train(TrainConfig(model=str(tiny_folder), data=str(data_file), output=str(out), lora=True, lora_r=8,
                          max_steps=25, lr=1e-2, batch_size=4, logging_steps=1, pack=True, save_steps=1000))
    assert m["last_loss"] < m["first_loss"], m
    adapter = out / "adapter_model.safetensors"
    assert adapter.exists() and not (out / "model.safetensors").exists()
    from safetensors.torch import load_file

    saved = load_file(adapter)
    # Only LoRA matrices and the six control-token rows are stored, never the whole embedding matrix.
    assert all("lora_" in k or "trainable_tokens" in k for k in saved), list(saved)
    rows = [v for k, v in saved.items() if "trainable_tokens" in k]
    assert rows and all(v.shape[0] == 6 for v in rows)
    # The tiny model's head is untied: its control-token rows must train too, or they could never be emitted.
    assert any("lm_head" in k and "trainable_tokens" in k for k in saved), list(saved)

    # Loading rebuilds base + control tokens + adapter; the result equals the unmerged peft model.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from aspd.loading import load_model
    from aspd.tokens import add_control_tokens

    merged, tok = load_model(out, device="cpu", dtype="float32")
    base = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32)
    add_control_tokens(tiny_tokenizer(), base)
    plain = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32)
    add_control_tokens(tiny_tokenizer(), plain)
    ref = PeftModel.from_pretrained(base, out).eval()
    ids = torch.tensor([tok("Give two tips <|para|>")["input_ids"]])
    with torch.no_grad():
        got, want, untrained = merged(ids).logits, ref(ids).logits, plain(ids).logits
    assert (got - want).abs().max() < 1e-4
    assert (got - untrained).abs().max() > 1e-2
    ctrl_ids = tok.convert_tokens_to_ids(["<|title|>", "<|para|>"])
    assert (got[..., ctrl_ids] - untrained[..., ctrl_ids]).abs().max() > 1e-2  # head rows learned

    # Packed as a derived-model artifact (bf16 factors) and rebuilt: the same model up to bf16 rounding.
    from aspd.models.derived import build, pack

    info = pack(out, tmp_path / "artifact", base="tiny")
    assert info["bytes"] < adapter.stat().st_size and info["sha256"]
    built = build(str(tmp_path / "artifact"), tmp_path / "built", base_folder=tiny_folder, dtype="float32")
    assert built["base_model"] == "tiny" and built["artifact_sha256"] == info["sha256"]
    rebuilt, _ = load_model(tmp_path / "built", device="cpu", dtype="float32")
    with torch.no_grad():
        assert (rebuilt(ids).logits - got).abs().max() < 0.05 * (got - untrained).abs().max()


def test_resume_continues_from_checkpoint(tiny_folder, data_file, tmp_path):
    out = tmp_path / "resume"
    base = dict(model=str(tiny_folder), data=str(data_file), output=str(out), lr=1e-3, batch_size=4,
                save_steps=4, logging_steps=1)
    train(TrainConfig(max_steps=4, **base))
    assert (out / "checkpoint-4").is_dir()
    first = [h["loss"] for h in json.loads((out / "loss_history.json").read_text()) if "loss" in h]
    m = train(TrainConfig(max_steps=8, resume=True, **base))
    assert m["steps"] == 8
    history = [h for h in json.loads((out / "loss_history.json").read_text()) if "loss" in h]
    # Steps 1-4 come back from the checkpoint as they were; only 5-8 ran again.
    assert [h["step"] for h in history] == list(range(1, 9))
    assert [h["loss"] for h in history[:4]] == first


def test_serial_baseline_drops_markup(data_file):
    recs = read_records(data_file, serial=True)
    assert all(len(r.answer.groups) == 0 for r in recs)
    assert len(read_records(data_file)[0].answer.groups) == 1


def test_bad_lines_name_file_and_line(tmp_path, capsys):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"question": "q", "answer": MARKED}) + "\n{not json\n"
                 + json.dumps({"question": "q", "answer": "<branchgroup><branch title=\"a\">x</branch>"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        read_records(p)
    recs = read_records(p, on_error="skip")
    assert len(recs) == 1
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "bad.jsonl:3" in err


def test_cli_train_reports_bad_data_in_one_line(tiny_folder, tmp_path, capsys):
    p = tmp_path / "bad.jsonl"
    p.write_text("{oops\n")
    code = cli_main(["train", "--model", str(tiny_folder), "--data", str(p), "--output", str(tmp_path / "o")])
    assert code == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_refuses_flash_attention(tiny_folder, data_file, tmp_path):
    with pytest.raises(Exception, match="cannot take the branch mask"):
        train(TrainConfig(model=str(tiny_folder), data=str(data_file), output=str(tmp_path / "f"),
                          attn="flash_attention_2", max_steps=1))


def test_collator_pads_without_fully_masked_rows(tiny_folder, data_file):
    from aspd.attention import layer_windows
    from aspd.tokens import add_control_tokens
    from aspd.train.data import Collator, LayoutDataset

    tok = tiny_tokenizer()
    ctrl = add_control_tokens(tok)
    ds = LayoutDataset(read_records(data_file), tok, ctrl)
    batch = Collator(layer_windows(tiny_model("llama", len(tok)).config), tok.pad_token_id)([ds[0], ds[6]])
    mask = batch["attention_mask"]
    assert mask.dtype == torch.bool and mask.shape[0] == 2
    assert mask.any(-1).all()  # every query row sees at least itself: no NaN under SDPA
    short = len(ds[6][0])
    assert (batch["labels"][1, short:] == -100).all()


def test_ddp_through_accelerate_launch_needs_no_code_change(tiny_folder, data_file, tmp_path):
    """Two CPU processes (gloo) under `accelerate launch`: the same `aspd train` command trains and saves once."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "aspd.cli", "train",
           "--model", str(tiny_folder), "--data", str(data_file), "--output", str(out), "--max-steps", "4",
           "--batch-size", "2", "--lr", "1e-3", "--logging-steps", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"steps": 4' in proc.stdout
    assert (out / "model.safetensors").exists() and (out / ASPD_CONFIG).exists()


def test_worker_processes_give_the_same_losses(tiny_folder, data_file, tmp_path, one_thread):
    """Batches built ahead by data-loader workers (the default on a GPU) train exactly as in-process ones."""
    base = dict(model=str(tiny_folder), data=str(data_file), lr=1e-3, batch_size=2, max_steps=4, logging_steps=1,
                save_steps=1000, pack=True, max_length=128)
    losses = []
    for w in (0, 2):
        out = tmp_path / f"w{w}"
        train(TrainConfig(output=str(out), workers=w, **base))
        losses.append([h["loss"] for h in json.loads((out / "loss_history.json").read_text()) if "loss" in h])
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    with pytest.raises(DataError, match="workers must be >= 0"):
        train(TrainConfig(output=str(tmp_path / "neg"), workers=-1, **base))
