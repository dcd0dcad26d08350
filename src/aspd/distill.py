"""`aspd distill`: the target model answers a prompt set itself (batched), giving the non-invasive training targets.

Output lines keep every input field and add `answer`; sampling settings go to OUT.meta.json. Runs append and
flush per batch; a rerun with --resume skips ids already answered.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from aspd.cli import CLIError
from aspd.jsonl import JsonlReader, RecordIds, read_appended, record_id


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="answer a prompt set with the model itself (self-distilled targets)")
    p.add_argument("--model", required=True, help="registry name or local HF folder")
    p.add_argument("--prompts", required=True, help="JSONL with {id, prompt|question|messages, context?}")
    p.add_argument("--output", required=True)
    p.add_argument("--limit", type=int, default=None, help="first N prompts only")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--repetition-penalty", type=float, default=1.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--resume", action="store_true", help="skip ids already in --output")
    p.add_argument("--skip-bad-lines", action="store_true", help="report and skip bad prompt lines (file:line)")
    p.set_defaults(func=run)


def read_prompts(path: str, limit: int | None = None, *, skip_bad_lines: bool = False
                 ) -> list[tuple[dict[str, Any], list[dict[str, str]]]]:
    """(record, messages) per prompt; every record gets its id (made up when it has none, see RecordIds)."""
    from aspd.sample import record_messages

    reader = JsonlReader(path, skip_bad_lines=skip_bad_lines, error=CLIError)
    ids = RecordIds()
    out: list[tuple[int, dict[str, Any], list[dict[str, str]]]] = []
    for lineno, obj in reader:  # all of it, so made-up ids do not depend on --limit
        try:
            msgs, _ = record_messages(obj)
            ids.add(obj, lineno)
        except (ValueError, KeyError, TypeError) as e:
            reader.bad(lineno, str(e))
            continue
        out.append((lineno, obj, msgs))
    if not out:
        raise reader.empty()
    made_up = ids.made_up()
    for lineno, obj, _ in out:
        if "id" not in obj:
            obj["id"] = made_up[lineno]
    return [(obj, msgs) for _, obj, msgs in out[:limit]]


def done_ids(path: Path) -> set[str]:
    """Ids already written; a torn last line (a killed run) is cut off the file."""
    ids = set()
    for lineno, obj in read_appended(path, repair=True, error=CLIError):
        try:
            rid = record_id(obj) if isinstance(obj, dict) else None
        except ValueError:
            rid = None
        if rid is None:
            raise CLIError(f"{path}:{lineno}: not an output line with an id; fix or remove it before resuming")
        ids.add(rid)
    return ids


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm
    from transformers import GenerationConfig

    from aspd.loading import load_model
    from aspd.sample import end_of_turn_ids, prompt_ids

    out = Path(args.output)
    if out.exists() and out.stat().st_size and not args.resume:
        raise CLIError(f"{out} exists; pass --resume to continue it")
    prompts = read_prompts(args.prompts, args.limit, skip_bad_lines=args.skip_bad_lines)
    skip = done_ids(out) if args.resume else set()
    items = [(o, m) for o, m in prompts if str(o["id"]) not in skip]
    model, tok = load_model(args.model, device=args.device, dtype=args.dtype)
    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else end_of_turn_ids(tok)[0]
    eot = end_of_turn_ids(tok)
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
                "repetition_penalty": args.repetition_penalty, "max_new_tokens": args.max_new_tokens,
                "seed": args.seed, "do_sample": args.temperature > 0}
    cfg = GenerationConfig(pad_token_id=pad, eos_token_id=eot, **{k: v for k, v in sampling.items() if k != "seed"})
    meta = {"model": args.model, "prompts": args.prompts, "sampling": sampling, "dtype": str(model.dtype),
            "device": str(model.device), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(f"{out}.meta.json").write_text(json.dumps(meta, indent=2))
    encoded = [(o, prompt_ids(tok, m)) for o, m in items]
    encoded.sort(key=lambda x: len(x[1]))  # similar lengths per batch: less padding
    torch.manual_seed(args.seed)
    t0, n_tok = time.perf_counter(), 0
    with open(out, "a", encoding="utf-8") as f, tqdm(total=len(encoded), desc="distill", unit="prompt") as bar:
        for i in range(0, len(encoded), args.batch_size):
            batch = encoded[i : i + args.batch_size]
            width = max(len(ids) for _, ids in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            att = torch.zeros_like(ids)
            for r, (_, p) in enumerate(batch):
                ids[r, width - len(p) :] = torch.tensor(p)
                att[r, width - len(p) :] = 1
            with torch.no_grad():
                gen = model.generate(input_ids=ids.to(model.device), attention_mask=att.to(model.device),
                                     generation_config=cfg)
            for (obj, _), row in zip(batch, gen[:, width:].tolist(), strict=True):
                cut = next((k for k, t in enumerate(row) if t in eot or t == pad), len(row))
                answer = tok.decode(row[:cut], skip_special_tokens=True).strip()
                n_tok += cut
                rec = {**obj, "answer": answer, "finish": "stop" if cut < len(row) else "length"}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(batch))
    dt = time.perf_counter() - t0
    print(json.dumps({"answered": len(encoded), "skipped": len(skip), "tokens": n_tok, "seconds": round(dt, 1)}))
    return 0
