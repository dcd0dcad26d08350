"""Speed benchmark: every model answers every question in one process, interleaved, with the same sampling.

Fairness rules (DESIGN.md section 6: speedups only against baselines measured in the same run, same machine):
- all engines are loaded first, on one device, then each gets one warm-up generation (kernels, allocator);
- questions are interleaved: for each question every model answers before the next question starts, and the
  order of the models rotates by one per question, so slow drift (thermal, other load) hits all alike;
- the sampling seed is fixed per question (base seed + question index), so all models draw the same seed;
- latency is wall-clock around `engine.generate` with a CUDA synchronize on both sides (prefill included,
  prompt templating and model loading excluded).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from aspd.bench.data import Question
from aspd.engine.core import MODES, Generation, HybridEngine, Limits
from aspd.engine.sampling import SamplingParams
from aspd.jsonl import read_appended

Row = dict[str, Any]


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked configuration: `NAME_OR_PATH[:mode][@MASK/POS]`; the spec string as given is its label.

    `@MASK/POS` decodes with other mask and position modes than the model's own (the Table 4 ablations).
    """

    label: str
    name: str
    mode: str
    role: str  # "model" (under test) | "baseline"
    mask_mode: str | None = None
    pos_mode: str | None = None

    @property
    def key(self) -> str:
        """Which engine runs it: one per model and mode pair (the weights are loaded once per model)."""
        return self.name if self.mask_mode is None else f"{self.name}@{self.mask_mode}/{self.pos_mode}"


def parse_spec(spec: str, role: str = "model") -> ModelSpec:
    """`NAME_OR_PATH[:hybrid|serial][@MASK/POS]`. Models default to hybrid, baselines to serial."""
    from aspd.layout import MaskMode, PosMode

    if role not in ("model", "baseline"):
        raise ValueError(f"role must be 'model' or 'baseline', not {role!r}")
    label = spec = spec.strip()
    mask = pos = None
    head, at, modes = spec.rpartition("@")
    if at and "/" in modes:
        mask, _, pos = modes.partition("/")
        if mask not in {m.value for m in MaskMode} or pos not in {m.value for m in PosMode}:
            raise ValueError(f"model spec {label!r}: modes must be MASK/POS with MASK in "
                             f"{', '.join(m.value for m in MaskMode)} and POS in {', '.join(m.value for m in PosMode)}")
        spec = head
    name, sep, mode = spec.rpartition(":")
    if not sep or mode not in MODES:
        # No mode suffix (a colon elsewhere is part of the name or path).
        name, mode = spec, "hybrid" if role == "model" else "serial"
    if not name:
        raise ValueError(f"model spec {label!r} has no model name")
    return ModelSpec(label, name, mode, role, mask, pos)


def parse_specs(models: Sequence[str], baselines: Sequence[str] = ()) -> list[ModelSpec]:
    specs = [parse_spec(s, "model") for s in models] + [parse_spec(s, "baseline") for s in baselines]
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"model spec given twice: {', '.join(dupes)}")
    return specs


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so wall-clock timers measure what ran, not what was enqueued."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def load_engines(specs: Sequence[ModelSpec], *, device: str | None = None, dtype: str = "auto",
                 attn: str = "sdpa", engine: str = "auto") -> dict[str, HybridEngine]:
    """One engine per spec key; the weights are loaded once per model name and shared by its mode variants."""
    engines: dict[str, HybridEngine] = {}
    for s in specs:
        if s.name not in engines:
            engines[s.name] = HybridEngine.from_pretrained(s.name, device=device, dtype=dtype, attn=attn,
                                                           engine=engine)
    for s in specs:
        if s.key not in engines:
            base = engines[s.name]
            variant = HybridEngine(base.model, base.tokenizer, mask_mode=s.mask_mode, pos_mode=s.pos_mode,
                                   engine=engine, promise_len=base.promise_len)
            variant.is_aspd_model = base.is_aspd_model
            engines[s.key] = variant
    for s in specs:
        if s.mode == "pasta" and engines[s.key].pasta is None:
            raise ValueError(f"model spec {s.label!r}: {s.name} has no PASTA tags (train it with --format pasta)")
    return engines


def rotated(items: Sequence[Any], k: int) -> list[Any]:
    """items rotated left by k: question k starts with model k mod n."""
    if not items:
        return []
    k %= len(items)
    return [*items[k:], *items[:k]]


def timed_generate(engine: HybridEngine, messages: list[dict[str, str]], mode: str, sampling: SamplingParams,
                   limits: Limits, answer_prefix: Sequence[int] = ()) -> tuple[Generation, float]:
    """(generation, wall seconds) with CUDA synchronized before and after; prompt templating is not timed."""
    # SoT writes its own prompts from the messages; every other mode gets the templated ids.
    prompt = messages if mode == "sot" else engine.prompt_ids(messages)
    sync(engine.device)
    t0 = time.perf_counter()
    gen = engine.generate(prompt, mode=mode, sampling=sampling, limits=limits, answer_prefix=answer_prefix)
    sync(engine.device)
    return gen, time.perf_counter() - t0


def make_row(q: Question, turn: int, spec: ModelSpec, messages: list[dict[str, str]], gen: Generation,
             seconds: float, seed: int, run_index: int, position: int) -> Row:
    st = gen.stats
    return {
        "id": q.id, "category": q.category, "turn": turn, "label": spec.label, "model": spec.name,
        "mode": spec.mode, "role": spec.role, "run_index": run_index, "position": position, "seed": seed,
        "messages": messages, "text": gen.text, "markup": gen.markup_text(), "finish_reason": gen.finish_reason,
        "tokens": st.tokens, "visible_tokens": st.visible_tokens, "parallel_tokens": st.parallel_tokens,
        "prefill_tokens": st.prefill_tokens, "groups": st.groups, "branches": list(st.branches),
        "dp": st.dp, "abn": st.abn, "seconds": seconds, "engine_seconds": st.seconds,
        "parallel_seconds": st.parallel_seconds,
        # TPS over our synchronized wall clock (Stats.tps uses the engine's own, unsynchronized timer).
        "tps": st.visible_tokens / seconds if seconds > 0 else 0.0,
        "parallel_tps": st.parallel_tps,
    }


def run_speed(
    engines: Mapping[str, HybridEngine],
    specs: Sequence[ModelSpec],
    questions: Iterable[Question],
    *,
    sampling: SamplingParams | None = None,
    limits: Limits | None = None,
    warmup: int = 1,
    answer_prefix: str | None = None,
    on_row: Callable[[Row], None] | None = None,
    done: Sequence[Row] = (),
) -> tuple[list[Row], list[Row]]:
    """Answer every question with every spec, interleaved; returns (rows, warm-up records).

    `engines` maps model names (ModelSpec.name) to loaded engines. A multi-turn question (MT-Bench) is
    answered turn by turn; each later turn's prompt is the chat so far, holding that model's own earlier
    answers (flattened text, as `aspd chat` does). `answer_prefix` (control tokens written literally) forces the
    start of every hybrid answer: for demos and tests only, it makes structure that is not the model's own.
    `done` holds the rows of questions a killed run finished (see PartialRun): they are kept, not re-asked, and
    the other questions keep their own seeds and model order.
    """
    from aspd.engine.cli import answer_prefix_ids

    sampling = sampling or SamplingParams()
    limits = limits or Limits()
    questions = list(questions)
    specs = list(specs)
    prefixes = {s.label: (answer_prefix_ids(engines[s.key], answer_prefix) if answer_prefix and s.mode == "hybrid"
                          else []) for s in specs}
    warm: list[Row] = []
    if questions and warmup > 0:
        # A cache for the longest chat of the run, its buckets compiled and captured now: an answer that made the
        # cache grow, or met a new bucket, would pay for compiling inside its own time.
        from aspd.engine.batch import reservation

        compiled: dict[str, float] = {}
        for key in dict.fromkeys(s.key for s in specs):
            eng = engines[key]
            longest = max(len(eng.to_ids("\n".join(q.turns), chat=False)) + (len(q.turns) - 1) * limits.max_new_tokens
                          for q in questions)
            t0 = time.perf_counter()
            eng.warm(max(4096, reservation(longest + 64, "hybrid", limits)), progress=True)
            compiled[key] = round(time.perf_counter() - t0, 3)
        # Short answers suffice to compile kernels and size the allocator; they are not measured.
        wl = replace(limits, max_new_tokens=min(limits.max_new_tokens, 32))
        for s in specs:
            eng = engines[s.key]
            first = [{"role": "user", "content": questions[0].turns[0]}]
            for _ in range(warmup):
                gen, sec = timed_generate(eng, first, s.mode, sampling, wl, prefixes[s.label])
                warm.append({"label": s.label, "seconds": sec, "tokens": gen.stats.tokens,
                             "compile_capture_seconds": compiled.pop(s.key, 0.0)})
    rows: list[Row] = list(done)
    finished = {r["id"] for r in done}
    for qi, q in enumerate(questions):
        if q.id in finished:
            continue
        order = rotated(specs, qi)
        sp = replace(sampling, seed=sampling.seed + qi)  # same seed for every model on this question
        history: dict[str, list[dict[str, str]]] = {s.label: [] for s in order}
        for turn, user in enumerate(q.turns, 1):
            for pos, s in enumerate(order):
                eng = engines[s.key]
                messages = [*history[s.label], {"role": "user", "content": user}]
                gen, sec = timed_generate(eng, messages, s.mode, sp, limits, prefixes[s.label])
                row = make_row(q, turn, s, messages, gen, sec, sp.seed, len(rows), pos)
                rows.append(row)
                history[s.label] = [*messages, {"role": "assistant", "content": gen.text}]
                if on_row is not None:
                    on_row(row)
    return rows, warm


class PartialRun:
    """`OUT/rows.partial.jsonl`: a header with the run's settings, then each row as soon as it is measured.

    A killed run leaves it behind; `--resume` keeps the questions it finished (all their turns and models) and
    asks only the rest. A torn last line (killed mid-write) is dropped; rows of a half-answered question too.
    """

    NAME = "rows.partial.jsonl"

    def __init__(self, out: str | Path, header: dict[str, Any]):
        self.path = Path(out) / self.NAME
        self.header = json.loads(json.dumps(header))  # as it reads back from JSON (tuples become lists)

    def load(self, questions: Sequence[Question], n_specs: int) -> list[Row]:
        """Rows of the finished questions; ValueError if the file was written with other settings."""
        lines = [obj for _, obj in read_appended(self.path)]  # drops the torn last line of a killed run
        header = lines[0].get("partial_run") if lines and isinstance(lines[0], dict) else None
        if not isinstance(header, dict):
            raise ValueError(f"{self.path} is not a partial run (no header line)")
        if header != self.header:
            diff = sorted(k for k in {*header, *self.header} if header.get(k) != self.header.get(k))
            raise ValueError(f"{self.path} was written with other settings ({', '.join(diff)}); "
                             "resume with the same ones, or remove it")
        rows: list[Row] = lines[1:]
        if not all(isinstance(r, dict) and "id" in r for r in rows):
            raise ValueError(f"{self.path} holds a line that is not a result row; remove it to start over")
        need = {q.id: len(q.turns) * n_specs for q in questions}
        count: dict[str, int] = {}
        for r in rows:
            count[r["id"]] = count.get(r["id"], 0) + 1
        keep = [r for r in rows if count[r["id"]] == need.get(r["id"])]
        for i, r in enumerate(keep):
            r["run_index"] = i
        return keep

    def start(self, rows: Sequence[Row]) -> Callable[[Row], None]:
        """Rewrite the file with the kept rows; returns the callback that appends each new row."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", encoding="utf-8") as f:
            f.write(json.dumps({"partial_run": self.header}) + "\n")
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

        def append(row: Row) -> None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

        return append
