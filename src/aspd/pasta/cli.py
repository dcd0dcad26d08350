"""`aspd pasta convert | annotate | filter`: make PASTA-LANG training files from answer JSONL.

Records have the shapes `aspd train` reads ({question|messages, answer|markup}); the answer is taken from
`markup`, else `answer`, else the final assistant message, and written back to the same place. Every input
line is checked before anything is written, and the output appears whole or not at all (temp file + rename).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  aspd pasta convert --data train_aspd.jsonl --out train_pasta.jsonl       # ASPD groups -> scopes
  aspd pasta annotate --data answers.jsonl --out annotated.jsonl --only-parallel
  aspd pasta filter --model smollm2-135m --data annotated.jsonl --out accepted.jsonl
  aspd train --format pasta --model smollm2-135m --data accepted.jsonl --output runs/pasta
"""


def register(sub: Any) -> None:
    p = sub.add_parser("pasta", help="PASTA-LANG data: convert ASPD markup, annotate lists, filter",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = p.add_subparsers(dest="pasta_command", required=True, metavar="ACTION")

    def io(q: argparse.ArgumentParser) -> None:
        q.add_argument("--data", required=True, help="input JSONL")
        q.add_argument("--out", required=True, help="output JSONL (written whole, or not at all)")
        q.add_argument("--skip-bad-lines", action="store_true", help="report and skip bad lines (file:line)")

    c = cmds.add_parser("convert", help="ASPD markup -> PASTA markup (one scope per group)")
    io(c)
    c.set_defaults(func=run_convert)
    a = cmds.add_parser("annotate", help="the list rule on plain answers: each item's elaboration goes async")
    io(a)
    a.add_argument("--only-parallel", action="store_true", help="drop lines the rule finds no list in")
    a.set_defaults(func=run_annotate)
    f = cmds.add_parser("filter", help="keep annotations that change few predictions and save enough steps")
    io(f)
    f.add_argument("--model", required=True, help="the model whose answers these are (registry name or folder)")
    f.add_argument("--max-changed", type=float, default=0.2, help="max share of changed predictions (default 0.2)")
    f.add_argument("--min-gain", type=float, default=0.2, help="min predicted latency gain (default 0.2)")
    f.add_argument("--device", default=None)
    f.add_argument("--dtype", default="float32", help="default float32 (argmax ties are rarer)")
    f.set_defaults(func=run_filter)


# ------------------------------------------------------------------------------------------------ files

Setter = Callable[[str], None]


def answer_of(obj: Any) -> tuple[list[dict[str, str]], str, Setter]:
    """(messages before the answer, the answer text, a setter writing a new answer back in its place)."""
    from aspd.sample import record_messages

    msgs, final = record_messages(obj)  # also checks the record's shape
    for key in ("markup", "answer"):
        if key in obj:
            if not isinstance(obj[key], str) or not obj[key].strip():
                raise ValueError(f"'{key}' must be a non-empty string")
            return msgs, obj[key], lambda text, key=key: obj.__setitem__(key, text)
    if final is None or not final.strip():
        raise ValueError("needs a non-empty 'answer' (or 'markup', or a final assistant message)")
    last = obj["messages"][-1]
    return msgs, final, lambda text: last.__setitem__("content", text)


def write_lines(path: str, lines: list[str]) -> None:
    """All lines or nothing: a temp file beside the target, renamed over it at the end."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def _each(args: argparse.Namespace, fn: Callable[[dict[str, Any], list[dict[str, str]], str, Setter], Any]
          ) -> list[tuple[dict[str, Any], Any]]:
    """(obj, fn(obj, messages, answer, setter)) for every line of --data; a bad line is a CLIError naming
    file:line, or with --skip-bad-lines is reported and left out. A file with no usable line is an error."""
    from aspd.cli import CLIError
    from aspd.jsonl import JsonlReader

    reader = JsonlReader(args.data, skip_bad_lines=args.skip_bad_lines, error=CLIError)
    out = []
    for lineno, obj in reader:
        try:
            out.append((obj, fn(obj, *answer_of(obj))))
        except (ValueError, KeyError, TypeError) as e:  # MarkupError and PastaError are ValueErrors
            reader.bad(lineno, str(e))
    if not out:
        raise reader.empty()
    return out


def _dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False)


# ----------------------------------------------------------------------------------------------- actions


def pasta_doc(text: str) -> Any:
    """PASTA markup as it is; ASPD markup (or plain text) converted."""
    from aspd.pasta.markup import from_aspd, has_tags, parse
    from aspd.sample import parse_answer

    return parse(text) if has_tags(text) else from_aspd(parse_answer(text))


def run_convert(args: argparse.Namespace) -> int:
    from aspd.pasta.markup import promises, render

    def convert(obj: dict[str, Any], _msgs: Any, text: str, put: Setter) -> int:
        doc = pasta_doc(text)
        put(render(doc))
        return promises(doc)

    done = _each(args, convert)
    write_lines(args.out, [_dump(obj) for obj, _n in done])
    print(f"aspd pasta convert: {len(done)} line(s), {sum(n > 0 for _, n in done)} with async spans",
          file=sys.stderr)
    return 0


def run_annotate(args: argparse.Namespace) -> int:
    from aspd.markup import flatten
    from aspd.pasta.markup import annotate_lists, has_tags, parse, promises, render
    from aspd.sample import parse_answer

    def annotate(obj: dict[str, Any], _msgs: Any, text: str, put: Setter) -> bool:
        if has_tags(text):  # annotated already: checked, kept
            return promises(parse(text)) > 0
        doc = annotate_lists(flatten(parse_answer(text)))
        if doc is None:
            return False
        put(render(doc))
        return True

    done = _each(args, annotate)
    kept = [_dump(obj) for obj, par in done if par or not args.only_parallel]
    write_lines(args.out, kept)
    print(f"aspd pasta annotate: {sum(p for _, p in done)} of {len(done)} line(s) annotated, {len(kept)} written",
          file=sys.stderr)
    return 0


def run_filter(args: argparse.Namespace) -> int:
    from aspd.cli import CLIError
    from aspd.loading import load_model
    from aspd.pasta.filter import evaluate
    from aspd.pasta.tokens import add_pasta_tokens

    if not 0.0 <= args.max_changed <= 1.0:
        raise CLIError("--max-changed must be between 0 and 1")
    # Every line is parsed before the model loads: a bad line fails fast, and nothing is written.
    samples = _each(args, lambda _obj, msgs, text, _put: (msgs, pasta_doc(text)))
    model, tok = load_model(args.model, device=args.device, dtype=args.dtype)
    tags = add_pasta_tokens(tok, model)  # a model trained without them gets rows at the mean embedding
    kept, changed, gain = [], 0.0, 0.0
    for obj, (msgs, doc) in samples:
        r = evaluate(model, tok, tags, msgs, doc, max_changed=args.max_changed, min_gain=args.min_gain)
        changed, gain = changed + r.changed, gain + r.gain
        if r.accepted:
            kept.append(_dump(obj))
    write_lines(args.out, kept)
    n = max(len(samples), 1)
    print(f"aspd pasta filter: accepted {len(kept)} of {len(samples)} line(s); mean changed share "
          f"{changed / n:.3f}, mean predicted gain {gain / n:.3f}", file=sys.stderr)
    return 0
