"""`aspd train`: fine-tune a causal LM on parallel-marked (or, with --serial, flattened) answers."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from aspd.layout import MaskMode, PosMode


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a model on parallel-marked JSONL samples",
                       description="Fine-tune any Hugging Face causal LM with the ASPD token format, "
                       "branch-invisible masks and shared position ids. Multi-GPU: `accelerate launch -m "
                       "aspd.cli train ...` (DDP or FSDP, no code change).")
    p.add_argument("--model", required=True, help="registry name (see `aspd models list`) or local HF folder")
    p.add_argument("--data", required=True, help="JSONL: {question|messages, answer} with optional markup")
    p.add_argument("--output", required=True, help="output folder (checkpoints, final weights, aspd.json)")
    p.add_argument("--serial", action="store_true", help="train the Seq baseline: drop the markup")
    p.add_argument("--format", choices=("aspd", "pasta"), default="aspd",
                   help="pasta: PASTA-LANG markup (answers with ASPD markup or none are converted on the fly)")
    p.add_argument("--promise-len", type=int, default=1,
                   help="pasta: positions each <promise/> reserves for its async span (default 1)")
    p.add_argument("--lora", action="store_true", help="LoRA (peft) instead of full fine-tuning")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps")
    p.add_argument("--lr", type=float, default=None, help="default 2e-5 (full) or 2e-4 (LoRA)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--warmup-ratio", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--pack", action="store_true", help="pack several samples per row (else pad)")
    p.add_argument("--mask-mode", choices=[m.value for m in MaskMode], default=MaskMode.INDEP.value)
    p.add_argument("--pos-mode", choices=[m.value for m in PosMode], default=PosMode.SAME_SEQ.value)
    p.add_argument("--attn", default="sdpa", help="sdpa or eager; FlashAttention-2 cannot take the mask")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument("--save-steps", type=int, default=200)
    p.add_argument("--save-total-limit", type=int, default=2)
    p.add_argument("--logging-steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    p.add_argument("--skip-bad-lines", action="store_true", help="report and skip malformed lines")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="data-loader worker processes that build batches ahead (default: 4 on a GPU, else 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aspd.attention import AttentionBackendError
    from aspd.cli import CLIError
    from aspd.train.data import DataError
    from aspd.train.trainer import TrainConfig, train

    names = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    try:
        metrics = train(cfg)
    except (DataError, AttentionBackendError) as e:
        raise CLIError(str(e)) from e
    print(json.dumps(metrics))
    return 0
