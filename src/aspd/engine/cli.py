"""`aspd generate` and `aspd chat`: answer prompts with the hybrid engine from the command line.

Human-readable output goes to stdout (the answer, groups drawn as boxes); the one-line speed summary and
notes go to stderr, so `aspd generate ... > answer.txt` captures the answer alone. `--json` prints one object
per answer (one line per turn in `chat`), `--stream` prints the reading-order view as it is decoded.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any, NoReturn, TextIO

from aspd.cli import CLIError

# The product default: the ASPD fine-tune of SmolLM2-135M (its base and shipped adapter are fetched on first use).
DEFAULT_MODEL = "aspd-smollm2-135m"

DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
MODES = ("hybrid", "serial", "pasta", "sot")  # == aspd.engine.core.MODES; kept here so --help skips torch


# ------------------------------------------------------------------------------------------ parser


def _one_line_error(parser: argparse.ArgumentParser) -> None:
    """Bad values of our flags end in one stderr line (exit 2) instead of argparse's usage block."""

    def error(message: str) -> NoReturn:
        print(f"aspd: error: {message} (see `{parser.prog} --help`)", file=sys.stderr)
        sys.exit(2)

    parser.error = error  # type: ignore[method-assign]


def _add_common(p: argparse.ArgumentParser) -> None:
    from aspd.layout import MaskMode, PosMode

    m = p.add_argument_group("model")
    m.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registry name or local Hugging Face folder (default: {DEFAULT_MODEL})")
    m.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    m.add_argument("--dtype", default="auto", choices=DTYPES, help="default: bf16 on a capable GPU, else fp32")
    m.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"),
                   help="attention backend; it must take the 4D branch mask (default: sdpa)")
    add_engine_arg(m)
    m.add_argument("--mode", default="hybrid", choices=MODES,
                   help="hybrid: decode parallel groups in parallel; serial: never open a group; pasta: "
                        "PASTA-LANG async spans (a model trained with --format pasta); sot: Skeleton-of-Thought "
                        "(any instruct model: an outline, then its points expanded in parallel)")
    m.add_argument("--mask-mode", default=None, choices=[x.value for x in MaskMode],
                   help="branch visibility (default: as the model was trained, from its aspd.json)")
    m.add_argument("--pos-mode", default=None, choices=[x.value for x in PosMode],
                   help="branch position ids (default: as the model was trained, from its aspd.json)")
    m.add_argument("--system", default=None, metavar="TEXT", help="system prompt")

    add_sampling_args(p)
    add_limit_args(p)

    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true",
                   help="one JSON object per answer: text, raw, markup, finish_reason, stats, model, mode")
    o.add_argument("--stream", action="store_true", help="print the answer in reading order as it is decoded")
    # Advanced: forces the start of the answer (control tokens written literally, e.g.
    # "<|title|>A<|/title|><|title|>B<|/title|><|para|>") so that even an untrained model opens a group.
    o.add_argument("--answer-prefix", default=None, metavar="TEXT",
                   help="advanced: force the start of the answer; control tokens such as <|title|> may be "
                        "written literally (for demos and tests)")


def add_engine_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The --engine flag of generate, chat, serve and bench."""
    p.add_argument("--engine", default="auto", choices=("auto", "fast", "eager"),
                   help="fast: preallocated cache, CUDA graphs on a GPU, one batched draw per step; eager: the "
                        "reference path (default auto = fast)")


def add_sampling_args(p: argparse.ArgumentParser, title: str = "sampling (default: greedy)",
                      seed_help: str = "sampling seed; each branch draws its own stream") -> None:
    """The sampling flags shared by generate, chat and bench; read back with `sampling_from_args`."""
    s = p.add_argument_group(title)
    s.add_argument("--temperature", metavar="T", type=float, default=None, help="0 = greedy (default 0)")
    s.add_argument("--top-k", metavar="K", type=int, default=None, help="0 = off (default 0)")
    s.add_argument("--top-p", metavar="P", type=float, default=None, help="nucleus mass in (0, 1] (default 1)")
    s.add_argument("--repetition-penalty", metavar="R", type=float, default=None, help="1 = off (default 1)")
    s.add_argument("--seed", metavar="N", type=int, default=None, help=seed_help)
    s.add_argument("--paper-sampling", action="store_true",
                   help="the paper's setting: temperature 0.7, top-k 20, top-p 0.8 (explicit flags win)")


def add_limit_args(p: argparse.ArgumentParser) -> None:
    """The engine limits flags; read back with `limits_from_args`."""
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-new-tokens", metavar="N", type=int, default=None, help="sampled tokens, all streams (default 512)")
    lim.add_argument("--max-branches", metavar="N", type=int, default=None, help="per group (default 8)")
    lim.add_argument("--max-branch-tokens", metavar="N", type=int, default=None, help="per branch (default 256)")
    lim.add_argument("--max-groups", metavar="N", type=int, default=None, help="per answer (default 8)")


def register(sub: Any) -> None:
    """Add `generate` and `chat` to the top-level `aspd` parser."""
    p = sub.add_parser("generate", help="answer one prompt with the hybrid engine",
                       description="Answer one prompt. Parallel groups are decoded in one sequence and one "
                                   "KV cache; the speed summary goes to stderr.")
    p.add_argument("prompt", nargs="?", default=None, help="the prompt; read from stdin when absent or '-'")
    _add_common(p)
    p.add_argument("--no-chat", action="store_true", help="feed the raw prompt, without the chat template")
    p.set_defaults(func=_cmd_generate)
    _one_line_error(p)

    p = sub.add_parser("chat", help="multi-turn chat on stdin ('/reset' clears, '/exit' or EOF ends)",
                       description="Multi-turn chat reading one user message per stdin line. Earlier answers "
                                   "re-enter the history as their flattened text. '/reset' clears the "
                                   "history, '/exit' or end of input ends.")
    _add_common(p)
    p.set_defaults(func=_cmd_chat)
    _one_line_error(p)


# ------------------------------------------------------------------------------------------ settings


def sampling_from_args(args: argparse.Namespace) -> Any:
    """SamplingParams from the flags; --paper-sampling supplies defaults that explicit flags override."""
    from aspd.engine.sampling import PAPER_SAMPLING, SamplingParams

    base = PAPER_SAMPLING if args.paper_sampling else SamplingParams()
    given = {
        "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty, "seed": args.seed,
    }
    values = {k: (v if v is not None else getattr(base, k)) for k, v in given.items()}
    try:
        return SamplingParams(**values)
    except ValueError as e:
        raise CLIError(f"bad sampling flags: {e}") from None


def limits_from_args(args: argparse.Namespace) -> Any:
    from aspd.engine.core import Limits

    given = {
        "max_new_tokens": args.max_new_tokens, "max_branches": args.max_branches,
        "max_branch_tokens": args.max_branch_tokens, "max_groups": args.max_groups,
    }
    for name, v in given.items():
        if v is not None and v < (2 if name == "max_branches" else 1):
            raise CLIError(f"--{name.replace('_', '-')} must be >= {2 if name == 'max_branches' else 1}, not {v}")
    return Limits(**{k: v for k, v in given.items() if v is not None})


def _check_flags(args: argparse.Namespace) -> None:
    if args.json and args.stream:
        raise CLIError("--json and --stream exclude each other")
    if args.stream and args.mode == "pasta":
        raise CLIError("--stream shows hybrid, serial and sot answers; a PASTA answer is complete only when "
                       "its spans are spliced in, so drop --stream")
    if getattr(args, "answer_prefix", None) and args.mode == "sot":
        raise CLIError("--answer-prefix does not apply to --mode sot (it writes its own prompts)")
    if getattr(args, "no_chat", False) and args.system is not None:
        raise CLIError("--system needs the chat template; drop --no-chat")
    if args.device is not None:
        import torch

        try:
            torch.device(args.device)
        except (RuntimeError, ValueError):
            raise CLIError(f"unknown device {args.device!r}") from None


def load_engine(args: argparse.Namespace) -> Any:
    """Load the model as HybridEngine.from_pretrained does, but also accept a plain (non-ASPD) model.

    A plain model gets the control tokens added (rows at the mean embedding, so it never picks them): it
    then answers serially, which is what an untrained model should do.
    """
    from transformers.utils import logging as hf_logging

    from aspd.engine.core import HybridEngine

    hf_logging.set_verbosity_error()  # tokenizer advice is noise on a CLI's stderr
    try:
        engine = HybridEngine.from_pretrained(args.model, device=args.device, dtype=args.dtype, attn=args.attn,
                                              mask_mode=args.mask_mode, pos_mode=args.pos_mode,
                                              engine=args.engine)
    except CLIError:
        raise
    except Exception as e:  # a CLI reports load failures in one line; the library raises them as usual
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CLIError(f"cannot load model {args.model!r}: {detail}") from None
    if args.mode == "pasta" and engine.pasta is None:
        raise CLIError(f"{args.model} has no PASTA tags; --mode pasta needs a model trained with "
                       "`aspd train --format pasta`")
    if not engine.is_aspd_model and args.mode == "hybrid":
        print(f"aspd: note: {args.model} is not an ASPD model (no control tokens); it will answer serially",
              file=sys.stderr)
    return engine


def answer_prefix_ids(engine: Any, text: str) -> list[int]:
    """Ids of a forced answer start. Text between control tokens is tokenized per segment (DESIGN.md s. 2)."""
    from aspd.tokens import text_ids

    c, names = engine.ctrl, engine.ctrl.names
    by_name = dict(zip(names.all(), c.all(), strict=True))
    ids: list[int] = []
    for piece in re.split("(" + "|".join(map(re.escape, names.all())) + ")", text):
        if piece in by_name:
            ids.append(by_name[piece])
        elif piece:
            ids.extend(text_ids(engine.tokenizer, piece))
    return ids


# ------------------------------------------------------------------------------------------ output


def format_answer(doc: Any) -> str:
    """The answer for a terminal: serial text as is; each group as a header and one box per branch."""
    from aspd.markup import Group, is_head

    lines: list[str] = []
    n = 0
    for seg in doc.normalized().segments:
        if isinstance(seg, Group):
            n += 1
            lines.append(f"── parallel group {n} · {len(seg.branches)} branches ──")
            for b in seg.branches:
                body = b.visible.strip().splitlines() or [""]
                if is_head(b.title):  # a shown title starts the branch's text: print it once
                    head, body = body[0], body[1:]
                else:
                    head = b.title
                lines.append(f"  ┌ {head}".rstrip())
                lines.extend(f"  │ {line}".rstrip() for line in body)
            lines.append("  └")
        else:
            text = seg.text.strip("\n")
            if text:
                lines.append(text)
    return "\n".join(lines)


def format_summary(stats: Any, finish_reason: str) -> str:
    groups = f"{stats.groups} group" + ("" if stats.groups == 1 else "s")
    s = (f"{stats.visible_tokens} tokens in {stats.seconds:.2f} s · {stats.tps:.1f} tok/s · {groups}"
         f" · ABN {stats.abn:.1f} · DP {stats.dp:.2f} · P-TPS {stats.parallel_tps:.1f}")
    return s + (" · stopped at the token limit" if finish_reason == "length" else "")


def result_json(gen: Any, model: str, mode: str) -> dict[str, Any]:
    markup = gen.markup_text()
    if markup is None:  # should not happen; keep the answer rather than fail the whole request
        print("aspd: warning: the answer is not valid markup", file=sys.stderr)
    return {"text": gen.text, "raw": gen.raw, "markup": markup, "finish_reason": gen.finish_reason,
            "stats": gen.stats.as_dict(), "model": model, "mode": mode}


def _answer(engine: Any, prompt: Any, args: argparse.Namespace, out: TextIO, **kw: Any) -> Any:
    """Generate one answer and print it in the requested form; returns the Generation."""
    kw.update(mode=args.mode, sampling=args.sampling, limits=args.limits)
    if args.answer_prefix:
        kw["answer_prefix"] = answer_prefix_ids(engine, args.answer_prefix)
    if args.stream:
        from aspd.engine.core import Generation
        from aspd.engine.stream import ReadingOrderView, stream_events

        view = ReadingOrderView(engine)
        gen = None
        for item in stream_events(engine, prompt, **kw):
            if isinstance(item, Generation):
                gen = item
            else:
                out.write(view.push(item))
                out.flush()
        out.write("\n")
        assert gen is not None  # stream_events always ends with the Generation unless closed early
    else:
        gen = engine.generate(prompt, **kw)
        if args.json:
            out.write(json.dumps(result_json(gen, args.model, args.mode), ensure_ascii=False) + "\n")
        else:
            out.write(format_answer(gen.doc) + "\n")
    out.flush()
    if not args.json:
        print(format_summary(gen.stats, gen.finish_reason), file=sys.stderr, flush=True)
    return gen


def _prepare(args: argparse.Namespace) -> None:
    """Every flag check before the (slow) model load, so mistakes fail at once."""
    _check_flags(args)
    args.sampling = sampling_from_args(args)
    args.limits = limits_from_args(args)


# ------------------------------------------------------------------------------------------ commands


def _cmd_generate(args: argparse.Namespace) -> int:
    _prepare(args)
    prompt = args.prompt
    if prompt is None or prompt == "-":
        if sys.stdin.isatty():
            print("aspd: reading the prompt from stdin (end with Ctrl-D)", file=sys.stderr)
        prompt = sys.stdin.read()
    prompt = prompt.strip()
    if not prompt:
        raise CLIError("empty prompt (pass it as an argument or on stdin)")
    engine = load_engine(args)
    messages: str | list[dict[str, str]] = prompt
    if args.system is not None:
        messages = [{"role": "system", "content": args.system}, {"role": "user", "content": prompt}]
    _answer(engine, messages, args, sys.stdout, chat=not args.no_chat)
    return 0


def _read_line(interactive: bool) -> str | None:
    if interactive:
        try:
            return input("> ")
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line if line else None


def _cmd_chat(args: argparse.Namespace) -> int:
    _prepare(args)
    engine = load_engine(args)
    interactive = sys.stdin.isatty()
    if interactive:
        print("aspd chat: one message per line; /reset clears the history, /exit or Ctrl-D ends",
              file=sys.stderr)
    system = [{"role": "system", "content": args.system}] if args.system is not None else []
    history: list[dict[str, str]] = list(system)
    while (line := _read_line(interactive)) is not None:
        msg = line.strip()
        if not msg:
            continue
        if msg == "/exit":
            break
        if msg == "/reset":
            history = list(system)
            print("aspd: history cleared", file=sys.stderr)
            continue
        history.append({"role": "user", "content": msg})
        gen = _answer(engine, list(history), args, sys.stdout)
        # The model reads its earlier answers as plain text: groups flattened, as the training data does.
        history.append({"role": "assistant", "content": gen.text})
        if not args.json:
            sys.stdout.write("\n")
            sys.stdout.flush()
    return 0

