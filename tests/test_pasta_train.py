"""`aspd train --format pasta` on a tiny random Llama: records, packing, loss falls, the output loads with the tags."""

import json

import pytest
import torch

from aspd.cli import main as cli_main
from aspd.pasta.layout import PastaLayout
from aspd.pasta.markup import PastaDoc, strip
from aspd.pasta.tokens import PASTA_TAGS, add_pasta_tokens
from aspd.testing import tiny_tokenizer
from aspd.tokens import add_control_tokens
from aspd.train.data import Collator, LayoutDataset, read_records
from aspd.train.trainer import ASPD_CONFIG

PASTA = ("Two tips:<scope>\n1. Diet:<promise/><async> Eat a balanced diet.</async>\n"
         "2. Sleep:<promise/><async> Sleep well.</async>\n</scope>In summary, habits matter.")
ASPD = ("Here are two tips:\n<branchgroup>\n<branch title=\"Diet\">Diet: eat a balanced diet.</branch>\n"
        "<branch title=\"Sleep\">Sleep: rest well.</branch>\n</branchgroup>\nIn summary, habits matter.")


@pytest.fixture()
def data_file(tmp_path):
    rows = [{"id": f"p{i}", "question": f"Give two tips {i}.", "answer": PASTA} for i in range(4)]
    rows += [{"id": "a", "question": "Give two tips.", "markup": ASPD},  # converted on the fly
             {"id": "m", "messages": [{"role": "user", "content": "Name a capital."},
                                      {"role": "assistant", "content": "Paris is the capital of France."}]}]
    p = tmp_path / "pasta.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def test_records_read_pasta_markup_and_convert_aspd(data_file):
    recs = read_records(data_file, fmt="pasta")
    assert all(isinstance(r.answer, PastaDoc) for r in recs)
    assert strip(recs[4].answer) == "Here are two tips:\nDiet: eat a balanced diet.\nSleep: rest well.\nIn summary, habits matter."
    serial = read_records(data_file, fmt="pasta", serial=True)
    assert serial[0].answer.segments[0].text == strip(recs[0].answer)  # the Seq baseline: plain text


def test_packed_pasta_rows_keep_each_sample_block(data_file):
    tok = tiny_tokenizer()
    ctrl = add_control_tokens(tok)
    tags = add_pasta_tokens(tok)
    ds = LayoutDataset(read_records(data_file, fmt="pasta"), tok, ctrl, pack=True, max_length=512, pasta=tags)
    row = ds[0]
    assert len(row) > 1 and all(isinstance(lay, PastaLayout) for lay in row)
    batch = Collator({"full_attention": None}, tok.pad_token_id)([row])
    mask, at = batch["attention_mask"][0, 0], 0
    for lay in row:
        n = len(lay)
        assert torch.equal(mask[at : at + n, at : at + n], lay.allowed())
        assert not mask[at : at + n, :at].any()  # never sees the sample packed before it
        assert torch.equal(batch["labels"][0, at : at + n], lay.labels)
        at += n


def test_cli_trains_pasta_and_output_loads_with_tags(tiny_folder, data_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_main(["train", "--model", str(tiny_folder), "--data", str(data_file), "--output", str(out),
                     "--format", "pasta", "--promise-len", "2", "--pack", "--max-steps", "40", "--lr", "3e-3",
                     "--batch-size", "4", "--logging-steps", "1", "--warmup-ratio", "0.1", "--save-steps", "1000"])
    assert code == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert m["steps"] == 40 and m["samples"] == 6
    losses = [h["loss"] for h in json.loads((out / "loss_history.json").read_text()) if "loss" in h]
    assert all(torch.isfinite(torch.tensor(losses))) and m["last_loss"] < 0.5 * m["first_loss"], losses
    meta = json.loads((out / ASPD_CONFIG).read_text())
    assert meta["format"] == "pasta" and meta["promise_len"] == 2 and meta["pasta_tokens"]["promise"] == "<promise/>"

    from aspd.loading import load_model

    model, tok = load_model(out, device="cpu", dtype="float32")
    vocab = tok.get_vocab()
    assert all(t in vocab for t in PASTA_TAGS.all()) and "<|para|>" in vocab
    assert model.get_input_embeddings().weight.shape[0] >= max(vocab[t] for t in PASTA_TAGS.all()) + 1
    # What it learned follows the streams: every target, each predicted from the slot before it in its own
    # stream (the main text after a span from its <promise/>), is now the greedy choice.
    from aspd.attention import forward_layout
    from aspd.pasta.layout import build_pasta_layout
    from aspd.pasta.markup import parse

    tags = add_pasta_tokens(tok)
    lay = build_pasta_layout(tok, tags, [{"role": "user", "content": "Give two tips 1."}], parse(PASTA),
                             promise_len=2)
    with torch.no_grad():
        pred = forward_layout(model, lay).argmax(-1)
    at = (lay.labels != -100).nonzero().flatten()
    assert torch.equal(pred[at - 1], lay.labels[at])
    promise = (lay.input_ids == tags.promise).nonzero().flatten()
    after_span = (lay.input_ids == tags.async_end).nonzero().flatten() + 1
    assert torch.equal(pred[promise], lay.input_ids[after_span])  # not the <async> that follows in the text


def test_lora_pasta_run_reloads_with_the_tag_rows(tiny_folder, data_file, tmp_path):
    from aspd.loading import load_model
    from aspd.train.trainer import TrainConfig, train

    out = tmp_path / "lora"
    train(TrainConfig(model=str(tiny_folder), data=str(data_file), output=str(out), format="pasta", lora=True,
                      lora_r=4, max_steps=3, lr=1e-2, batch_size=4, save_steps=1000))
    from safetensors.torch import load_file

    rows = [v for k, v in load_file(out / "adapter_model.safetensors").items() if "trainable_tokens" in k]
    assert rows and all(v.shape[0] == 11 for v in rows)  # the six ASPD rows and the five PASTA rows
    model, tok = load_model(out, device="cpu", dtype="float32")
    assert tok.convert_tokens_to_ids("<promise/>") < model.get_input_embeddings().weight.shape[0]
