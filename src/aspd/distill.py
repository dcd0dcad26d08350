"""`aspd distill`: a model answers a prompt set (batched): the target itself (non-invasive targets) or a teacher.

Output lines keep every input field and add `answer` and `finish`; sampling settings go to OUT.meta.json. Runs
append and flush per batch; a rerun with --resume skips ids already answered. Answers cut by the length limit,
caught looping or echoing the shape instruction (`drop_reason`) go to OUT.dropped.jsonl with the reason (unless
--keep-bad), so OUT holds usable targets only.
A teacher may be steered by a system prompt (`--system`, `--parallel-style`) that is not part of the sample.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aspd.cli import CLIError
from aspd.jsonl import JsonlReader, RecordIds, read_appended

PARALLEL_STYLE = (
    "You are a careful, helpful assistant. If a question asks about several separate aspects, options, "
    "reasons, steps or items that can each be explained on its own, begin with one sentence that answers it "
    "directly; then give one paragraph per aspect, each under a short bold title that names that aspect in the "
    "question's own terms, written so that it makes sense without the other paragraphs (never refer to them); "
    "then end with one sentence that sums up. If the question has a single focus (a fact, a definition, a "
    "calculation, a piece of code, a rewrite, a story or a poem), answer it plainly and directly, without that "
    "shape. Be accurate and concise."
)
"""The teacher's system prompt for answers that parallelise where the question invites it (issue 17)."""

_FENCE = re.compile(r"^\s*(```|~~~)", re.MULTILINE)
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")


def loop_reason(text: str) -> str | None:
    """Why an answer reads as a generation loop, or None.

    A prose sentence of six or more words that comes back three times, or a long answer that compresses far
    better than prose does (repeated blocks). Code blocks are left out: code legitimately repeats lines.
    """
    lines, code = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            code = not code
        elif not code:
            lines.append(line)
    prose = "\n".join(lines)
    counts = Counter(" ".join(s.split()).lower() for s in _SENTENCE.findall(prose) if len(s.split()) >= 6)
    repeated = [s for s, n in counts.items() if n >= 3]
    if repeated:
        return f"a sentence repeats {counts[repeated[0]]} times: {repeated[0][:60]!r}"
    raw = text.encode()
    if len(raw) >= 1200 and len(zlib.compress(raw)) / len(raw) < 0.2:
        return "repeated blocks (the answer compresses to under 20%)"
    return None


_BOLD_TITLE = re.compile(r"^\s*(?:[-*+]|\d+[.)])?\s*\*\*([^*\n]{1,60}?)\s*:?\s*\*\*", re.MULTILINE)
_SHAPE_TITLES = frozenset({"opening", "closing", "opening sentence", "closing sentence", "opening paragraph",
                           "closing paragraph", "opening statement", "closing statement"})
_GENERIC_TITLES = frozenset({"aspect", "aspects", "cost", "options", "reasons", "steps", "items"})


def echo_reason(text: str, question: str = "") -> str | None:
    """Why an answer echoes the shape instruction instead of following it, or None.

    A small teacher told to write "an opening sentence, one paragraph per aspect under a bold title (for
    example **Cost**), a closing sentence" wrote **Closing Sentence** as a title, or titled its paragraphs with
    the instruction's own words (**Cost**, **Reasons**, **Steps**, **Items**) whatever the question: 578 of
    9,737 answers of the first teacher run. Such answers teach titles that name nothing. With the `question`,
    one such word is enough when the question never mentions it (a first paragraph on **Cost** of the
    Renaissance having had the Internet).
    """
    titles = [m.group(1).strip().rstrip(":").strip().lower() for m in _BOLD_TITLE.finditer(text)]
    shape = [t for t in titles if t in _SHAPE_TITLES]
    if shape:
        return f"a bold title names the answer's shape: {shape[0]!r}"
    generic = sorted(set(titles) & _GENERIC_TITLES)
    if len(generic) >= 2:
        return f"bold titles are the instruction's generic words: {', '.join(generic)}"
    asked = question.lower()
    unasked = [t for t in generic if question and t.rstrip("s") not in asked]
    if unasked:
        return f"a bold title is the instruction's example word, which the question never uses: {unasked[0]!r}"
    return None


def drop_reason(answer: str, finish: str, question: str = "") -> str | None:
    """Why a teacher answer is no training target: 'length' (cut), 'loop' or 'echo'; None to keep it."""
    if finish == "length":
        return "length"
    if loop_reason(answer):
        return "loop"
    return "echo" if echo_reason(answer, question) else None


def question_text(obj: dict[str, Any]) -> str:
    """The last user turn of a prompt record (what an answer's titles are checked against); '' if unreadable."""
    from aspd.sample import record_messages

    try:
        msgs, _ = record_messages(obj)
    except ValueError:
        return ""
    return next((str(m["content"]) for m in reversed(msgs) if m["role"] == "user"), "")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="answer a prompt set with the model itself (self-distilled targets)")
    p.add_argument("--model", required=True, help="registry name or local HF folder")
    p.add_argument("--prompts", required=True, help="JSONL with {id, prompt|question|messages, context?}")
    p.add_argument("--output", required=True)
    p.add_argument("--limit", type=int, default=None, help="first N prompts only")
    p.add_argument("--batch-size", type=int, default=64,
                   help="rows per generate call (--engine pad); answers decoded at once (--engine aspd)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--repetition-penalty", type=float, default=1.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--resume", action="store_true", help="skip ids already in --output (or its dropped file)")
    p.add_argument("--engine", choices=("pad", "cb", "aspd"), default="pad",
                   help="pad: left-padded batches through generate, in segments on a GPU (the fastest measured on "
                        "an H200); cb: transformers' continuous batching (no repetition penalty); aspd: aspd's own "
                        "continuous batching (serial answers, the server's engine; a seed per prompt)")
    p.add_argument("--segment", type=int, default=None, metavar="N",
                   help="--engine pad: at most N new tokens per generate call; rows still running rejoin the queue "
                        "and finished ones make room for waiting prompts (0: each batch runs to its longest row; "
                        "default 128 on a GPU, 0 on the CPU, where feeding the unfinished rows again costs more)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop cleanly after this long (finished answers are kept; --resume continues)")
    p.add_argument("--system", default=None, metavar="TEXT|@FILE",
                   help="a system prompt for generation only (not written to the records)")
    p.add_argument("--parallel-style", action="store_true",
                   help="the built-in teacher system prompt: multi-aspect answers as titled, self-contained paragraphs")
    p.add_argument("--keep-bad", action="store_true",
                   help="keep answers cut by the length limit, looping or echoing the instruction in --output "
                        "(default: OUT.dropped.jsonl)")
    p.add_argument("--skip-bad-lines", action="store_true", help="report and skip bad prompt lines (file:line)")
    p.set_defaults(func=run)


def system_prompt(args: argparse.Namespace) -> str | None:
    if args.system and args.parallel_style:
        raise CLIError("give --system or --parallel-style, not both")
    if args.parallel_style:
        return PARALLEL_STYLE
    if args.system and args.system.startswith("@"):
        try:
            return Path(args.system[1:]).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise CLIError(f"cannot read the system prompt: {e}") from e
    return args.system


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


def iter_answers(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of an `aspd distill` output (or dropped) file, each checked as a `DistillAnswer`; a bad line
    raises CLIError with its file:line and what is wrong."""
    from aspd.records import DistillAnswer, RecordError

    for line_no, obj in JsonlReader(path):
        try:
            DistillAnswer.read(obj)
        except RecordError as e:
            raise CLIError(f"{path}:{line_no}: {e}") from None
        yield obj


def done_ids(path: Path) -> set[str]:
    """Ids already written (each line a `DistillAnswer`); a torn last line (a killed run) is cut off the file."""
    from aspd.records import DistillAnswer, RecordError

    ids = set()
    for lineno, obj in read_appended(path, repair=True, error=CLIError):
        try:
            ids.add(DistillAnswer.read(obj).id)
        except RecordError as e:
            raise CLIError(f"{path}:{lineno}: not a distill output line ({e}); fix or remove it before resuming"
                           ) from None
    return ids


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from transformers import GenerationConfig

    from aspd.loading import load_model
    from aspd.sample import end_of_turn_ids, prompt_ids

    out = Path(args.output)
    dropped = Path(f"{out}.dropped.jsonl")
    if args.segment is not None and args.segment < 0:
        raise CLIError("--segment must be >= 0")
    if out.exists() and out.stat().st_size and not args.resume:
        raise CLIError(f"{out} exists; pass --resume to continue it")
    system = system_prompt(args)
    prompts = read_prompts(args.prompts, args.limit, skip_bad_lines=args.skip_bad_lines)
    skip = (done_ids(out) | done_ids(dropped)) if args.resume else set()
    items = [(o, m) for o, m in prompts if str(o["id"]) not in skip]
    if system:  # steers generation only; the records keep the user's conversation
        items = [(o, [{"role": "system", "content": system}, *[x for x in m if x["role"] != "system"]])
                 for o, m in items]
    model, tok = load_model(args.model, device=args.device, dtype=args.dtype)
    if tok.pad_token_id is None:  # tok.pad needs one; padding is masked out, and an end of turn ends a row anyway
        tok.pad_token = tok.convert_ids_to_tokens(end_of_turn_ids(tok)[0])
    pad = tok.pad_token_id
    eot = end_of_turn_ids(tok)
    engine = args.engine
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
                "repetition_penalty": args.repetition_penalty if engine != "cb" else 1.0,
                "max_new_tokens": args.max_new_tokens, "seed": args.seed, "do_sample": args.temperature > 0}
    cfg = GenerationConfig(pad_token_id=pad, eos_token_id=eot, **{k: v for k, v in sampling.items() if k != "seed"})
    if args.segment is None:
        args.segment = 128 if model.device.type == "cuda" else 0
    meta = {"model": args.model, "prompts": args.prompts, "engine": engine, "sampling": sampling,
            "segment": args.segment if engine == "pad" else None,
            "dtype": str(model.dtype), "device": str(model.device), "system": system, "keep_bad": args.keep_bad,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(f"{out}.meta.json").write_text(json.dumps(meta, indent=2))
    encoded = [(o, prompt_ids(tok, m)) for o, m in items]
    encoded.sort(key=lambda x: len(x[1]))  # similar lengths per batch: less padding
    stops = _stops(cfg)
    t0, n_tok, n_drop = time.perf_counter(), 0, Counter()
    deadline = t0 + args.time_budget if args.time_budget else None
    gen = {"cb": _generate_cb, "aspd": _generate_aspd}.get(engine, _generate_padded)
    with (open(out, "a", encoding="utf-8") as f, open(dropped, "a", encoding="utf-8") as fd,
          tqdm(total=len(encoded), desc="distill", unit="prompt") as bar):
        for obj, row in gen(model, tok, encoded, cfg, args, deadline):
            cut = next((k for k, t in enumerate(row) if t in stops), len(row))
            answer = tok.decode(row[:cut], skip_special_tokens=True).strip()
            n_tok += cut
            rec = {**obj, "answer": answer, "finish": "stop" if cut < len(row) else "length"}
            why = drop_reason(answer, rec["finish"], question_text(obj))
            if why is None and not answer:
                why = "empty"
            if why is not None and not args.keep_bad:
                n_drop[why] += 1
                fd.write(json.dumps({**rec, "drop": why}, ensure_ascii=False) + "\n")
            else:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            bar.update(1)
            if bar.n % 64 == 0:
                f.flush()
                fd.flush()
    dt = time.perf_counter() - t0
    done = bar.n
    print(json.dumps({"engine": engine, "answered": done, "left": len(encoded) - done,
                      "kept": done - sum(n_drop.values()), "dropped": dict(n_drop), "skipped": len(skip),
                      "tokens": n_tok, "seconds": round(dt, 1),
                      "tokens_per_second": round(n_tok / dt, 1) if dt else 0.0}))
    return 0


Encoded = list[tuple[dict[str, Any], list[int]]]


def _stops(cfg: Any) -> set[int]:
    """The ids that end a row: an end of turn, or the padding `generate` writes after one."""
    eos = cfg.eos_token_id
    return {*(eos if isinstance(eos, list) else [eos]), cfg.pad_token_id}


def _generate_padded(model: Any, tok: Any, encoded: Encoded, cfg: Any, args: argparse.Namespace,
                     deadline: float | None) -> Iterator[tuple[dict[str, Any], list[int]]]:
    """Left-padded batches through `generate` (any device; the only path with a repetition penalty).

    Each call generates at most --segment tokens. Rows that ended leave; the others go back to the front of the
    queue with what they generated appended to their input, so waiting prompts fill the batch instead of padding
    behind its longest row (greedy answers are unchanged: the same tokens are fed either way)."""
    import torch

    torch.manual_seed(args.seed)
    stops = _stops(cfg)
    limit = cfg.max_new_tokens
    todo = deque((obj, ids, []) for obj, ids in encoded)  # (record, prompt ids, tokens generated so far)
    while todo:
        if deadline is not None and time.perf_counter() > deadline:
            return
        batch = [todo.popleft() for _ in range(min(args.batch_size, len(todo)))]
        room = max(limit - len(done) for _, _, done in batch)
        padded = tok.pad({"input_ids": [ids + done for _, ids, done in batch]}, padding_side="left",
                         return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**padded.to(model.device), generation_config=cfg,
                                 max_new_tokens=min(args.segment or limit, room))
        left = []
        for (obj, ids, done), new in zip(batch, gen[:, padded["input_ids"].shape[1] :].tolist(), strict=True):
            row = done + new[: limit - len(done)]
            if len(row) >= limit or any(t in stops for t in new):
                yield obj, row
            else:
                left.append((obj, ids, row))
        todo.extendleft(reversed(left))


def _generate_aspd(model: Any, tok: Any, encoded: Encoded, cfg: Any, args: argparse.Namespace,
                   deadline: float | None) -> Iterator[tuple[dict[str, Any], list[int]]]:
    """aspd's continuous batching (`aspd.engine.batch`): serial answers, up to --batch-size at once, each with its
    own seed (--seed + its index); answers come back as they finish."""
    from aspd.engine.batch import BatchEngine, BatchRequest, reservation
    from aspd.engine.sampling import SamplingParams
    from aspd.engine.types import Limits

    vocab = len(tok)  # a serial answer's control tokens (never trained, rarely sampled) are dropped
    batch = BatchEngine.for_plain_model(model, tok, max_batch=args.batch_size)
    # Room for a full batch of the longest prompts (sorted last), so no request waits on the cache.
    limits = Limits(max_new_tokens=args.max_new_tokens)
    if encoded:
        batch.max_slots = max(batch.max_slots,
                              args.batch_size * reservation(len(encoded[-1][1]), "serial", limits))
    finished: list[tuple[dict[str, Any], BatchRequest]] = []
    for i, (obj, ids) in enumerate(encoded):
        sp = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            repetition_penalty=args.repetition_penalty, seed=args.seed + i)
        batch.submit(BatchRequest(ids, "serial", sp, limits,
                                  on_done=lambda r, obj=obj: finished.append((obj, r))))
    while batch.busy and (deadline is None or time.perf_counter() < deadline):
        batch.step()
        while finished:
            obj, r = finished.pop(0)
            if r.error is not None or r.result is None:
                raise CLIError(f"generation failed: {r.error}")
            yield obj, [t for t in r.result.answer_ids if t < vocab]


def _generate_cb(model: Any, tok: Any, encoded: Encoded, cfg: Any, args: argparse.Namespace,
                 deadline: float | None) -> Iterator[tuple[dict[str, Any], list[int]]]:
    """Transformers' continuous batching (paged cache, no padding, finished rows replaced at once): answers
    come back as they finish. It has no repetition penalty; looping answers are dropped downstream."""
    import dataclasses

    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    opts: dict[str, Any] = {"seed": args.seed}
    if model.device.type != "cuda":  # small, graph-free cache: the CPU path exists for tests
        opts.update(num_blocks=64, max_batch_tokens=512, use_cuda_graph=False)
    cb = ContinuousBatchingConfig(**{k: v for k, v in opts.items() if k in fields})
    by_id = {f"r{i}": obj for i, (obj, _) in enumerate(encoded)}
    with model.continuous_batching_context_manager(generation_config=cfg, continuous_batching_config=cb,
                                                   block=True, timeout=10, warmup=model.device.type == "cuda") as m:
        for i, (_, ids) in enumerate(encoded):
            m.add_request(ids, request_id=f"r{i}", max_new_tokens=cfg.max_new_tokens)
        left = len(encoded)
        while left and (deadline is None or time.perf_counter() < deadline):
            r = m.get_result(timeout=1)
            if r is None:
                if not m.is_running():
                    raise CLIError("continuous batching stopped unexpectedly (see the log above)")
                continue
            if not r.is_finished():
                continue
            left -= 1
            if r.error is not None:
                raise CLIError(f"generation failed: {r.error}")
            yield by_id[r.request_id], list(r.generated_tokens)
