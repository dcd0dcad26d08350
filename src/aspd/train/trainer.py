"""Serial-parallel fine-tuning on top of the Hugging Face Trainer.

The Trainer brings gradient accumulation, mixed precision, the cosine schedule, checkpoints, resuming and
multi-GPU through `accelerate launch` (DDP or FSDP) unchanged; this module only supplies the data (layouts and
4D masks), the control tokens and the optional LoRA wrapper.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from aspd.attention import SUPPORTED_ATTENTION, AttentionBackendError, layer_windows, mask_dtype
from aspd.layout import MaskMode, PosMode
from aspd.pasta.tokens import PASTA_TAGS, add_pasta_tokens
from aspd.tokens import DEFAULT_TOKENS, add_control_tokens
from aspd.train.data import FORMATS, Collator, DataError, LayoutDataset, read_records

ASPD_CONFIG = "aspd.json"  # written next to the weights; tells the engine how the model was trained


@dataclass
class TrainConfig:
    model: str
    data: str
    output: str
    serial: bool = False  # the Seq baseline: same samples, markup removed
    format: str = "aspd"  # aspd | pasta (PASTA markup, or ASPD markup converted on the fly)
    promise_len: int = 1  # pasta: positions each <promise/> reserves for its span
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    epochs: float = 2.0
    max_steps: int = -1
    lr: float | None = None  # default: 2e-5 full, 2e-4 LoRA
    batch_size: int = 4
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_length: int = 1024
    pack: bool = False
    mask_mode: str = MaskMode.INDEP.value
    pos_mode: str = PosMode.SAME_SEQ.value
    attn: str = "sdpa"
    precision: str = "auto"  # auto | bf16 | fp32
    save_steps: int = 200
    save_total_limit: int = 2
    logging_steps: int = 5
    seed: int = 0
    resume: bool = False
    skip_bad_lines: bool = False
    workers: int | None = None  # data-loader processes; None: 4 with CUDA, else 0


def _bf16(cfg: TrainConfig) -> bool:
    if cfg.precision == "fp32":
        return False
    ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if cfg.precision == "bf16" and not ok:
        raise ValueError("--precision bf16 needs a GPU with bf16 support")
    return ok


def token_rows(model: Any, ids: list[int]) -> list[int] | dict[str, list[int]]:
    """peft's trainable_token_indices for the control tokens.

    A tied head follows the embedding by itself; an untied one (e.g. Qwen2.5-0.5B as converted from GGUF) needs
    its own rows trained, or the model could read the tokens but never learn to emit them.
    """
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or out.weight is inp.weight:
        return ids
    names = {m: n.rsplit(".", 1)[-1] for n, m in model.named_modules()}
    return {names[inp]: ids, names[out]: ids}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run one fine-tune; returns the final metrics (train_loss, steps, first/last logged loss)."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, set_seed

    from aspd.loading import load_tokenizer, model_folder

    if cfg.attn not in SUPPORTED_ATTENTION:
        raise AttentionBackendError(
            f"attention implementation {cfg.attn!r} cannot take the branch mask; use one of {SUPPORTED_ATTENTION}"
        )
    if cfg.format not in FORMATS:
        raise DataError(f"unknown format {cfg.format!r}; choose from {', '.join(FORMATS)}")
    if cfg.promise_len < 1:
        raise DataError("promise_len must be >= 1")
    if cfg.workers is not None and cfg.workers < 0:
        raise DataError(f"workers must be >= 0, not {cfg.workers}")
    # The data first: a bad file fails before the slow model load.
    records = read_records(cfg.data, serial=cfg.serial, on_error="skip" if cfg.skip_bad_lines else "raise",
                           fmt=cfg.format)
    set_seed(cfg.seed)
    folder = model_folder(cfg.model)
    tokenizer = load_tokenizer(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=cfg.attn)
    ctrl = add_control_tokens(tokenizer, model)
    pasta = add_pasta_tokens(tokenizer, model) if cfg.format == "pasta" else None  # after the ASPD six
    dataset = LayoutDataset(
        records, tokenizer, ctrl, max_length=cfg.max_length, mask_mode=cfg.mask_mode, pos_mode=cfg.pos_mode,
        pack=cfg.pack, pasta=pasta, promise_len=cfg.promise_len,
    )
    new_tokens = [*ctrl.all(), *(pasta.all() if pasta else ())]
    collator = Collator(layer_windows(model.config), tokenizer.pad_token_id, mask_dtype(model))

    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        # The new control tokens must learn too: train just their rows, not the whole matrices.
        lcfg = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
            target_modules="all-linear", trainable_token_indices=token_rows(model, new_tokens),
        )
        model = get_peft_model(model, lcfg)
    model.config.use_cache = False

    lr = cfg.lr if cfg.lr is not None else (2e-4 if cfg.lora else 2e-5)
    args = TrainingArguments(
        output_dir=cfg.output,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a share of the total steps
        weight_decay=cfg.weight_decay,
        bf16=_bf16(cfg),
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        remove_unused_columns=False,  # the collator builds position ids and 4D masks itself
        report_to=[],
        # Laying out masks costs CPU time per step (O(tokens^2) per sample); on a GPU, worker processes build the
        # next batches while the current one runs. On the CPU they would only compete for the same cores.
        dataloader_num_workers=cfg.workers if cfg.workers is not None else (4 if torch.cuda.is_available() else 0),
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    resume = None
    if cfg.resume:
        from transformers.trainer_utils import get_last_checkpoint

        resume = get_last_checkpoint(cfg.output)
        if resume is None:
            print(f"aspd: no checkpoint in {cfg.output}; starting from scratch")
    result = trainer.train(resume_from_checkpoint=resume)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "train_loss": result.training_loss,
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "samples": len(records),
    }
    if not cfg.lora:
        trainer.save_model(cfg.output)  # every rank takes part (FSDP gathers the shards)
    if not trainer.is_world_process_zero():  # under DDP/FSDP only rank 0 writes the other outputs
        return metrics
    if cfg.lora:
        # The resized embedding is rebuilt at load time (same deterministic init); only the trained rows of the
        # control tokens travel, inside the adapter. Keeps artifacts small.
        model.save_pretrained(cfg.output, save_embedding_layers=False)
    tokenizer.save_pretrained(cfg.output)
    meta = {
        "format": cfg.format,
        "tokens": asdict(DEFAULT_TOKENS),
        **({"pasta_tokens": asdict(PASTA_TAGS), "promise_len": cfg.promise_len} if pasta else {}),
        "mask_mode": cfg.mask_mode,
        "pos_mode": cfg.pos_mode,
        "serial": cfg.serial,
        "lora": cfg.lora,
        "base_model": str(cfg.model),
        "train": asdict(cfg),
    }
    (Path(cfg.output) / ASPD_CONFIG).write_text(json.dumps(meta, indent=2))
    (Path(cfg.output) / "loss_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return metrics

