"""Random control-token streams through the real decoding loop, and the invariants every answer must keep.

A case forces a random start of the answer (head and label titles, duplicate, empty and unclosed titles,
`<|para|>`, stray control tokens, literal markup text, the end of turn) and lets a tiny model whose control
rows are biased go on sampling, under random small limits, in hybrid or serial mode, on the eager engine or the
fast engine's bucketed path (what CUDA graphs replay). `check` lists every broken invariant of one answer:

- limits: sampled tokens, groups, branches per group, tokens per branch (prefix and end included), positions;
- termination: forwards bounded by the sampled tokens (no step without progress);
- `finish_reason` is `stop` exactly when the answer ends with the end of turn and the budget ended no branch;
- the markup renders and parses back to `doc`, and `text == flatten(doc)`;
- the reading-order stream equals `text`, and `text` holds no control-token string;
- `doc`, `answer_ids` and `raw` are the reading of the events by an independent restatement of the rules
  (`expected_answer`), and the server's rebuild from events (`AnswerBuilder`) gives the same.

`tests/test_engine_fuzz.py` runs a CI-sized batch; `benchmarks/engine_fuzz.py` runs the long one.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from aspd.engine.answer import AnswerBuilder
from aspd.engine.core import MAIN_STREAM, Event, Generation, HybridEngine, Limits
from aspd.engine.kv import StaticKV
from aspd.engine.sampling import SamplingParams
from aspd.engine.stream import ReadingOrderView
from aspd.layout import PosMode
from aspd.markup import Branch, Document, Group, Segment, Serial, branch_body, flatten, parse
from aspd.testing.tiny import ARCHS, tiny_model, tiny_tokenizer
from aspd.tokens import add_control_tokens, branch_prefix_ids, is_head, text_ids

HEADS = ("1. **Diet**:", "2. Sleep", "- Walk daily", "## Work", "Cost:", "**Rest** well")
LABELS = ("Diet", "Sleep", "Work", "A", "B", " Diet ", "x\ny")
LITERALS = ("</branch>", "<branchgroup>", "</branchgroup>", '<branch title="t">', "&lt;/branch>",
            "&amp;lt;branchgroup", "git checkout <branch>", " a < b && c", "</branch")
TEXTS = (" Eat well.", " habits matter", "\n", " ", "1.", " Paris")
PROMPTS = ("Give tips.", "Give me three tips for staying healthy.")


def biased_engines(arch: str = "llama", seed: int = 0) -> dict[str, HybridEngine]:
    """An eager and a fast (bucketed) engine over one tiny model whose control and end-of-turn rows are random,
    so that it samples them often."""
    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok), seed=seed)
    ctrl = add_control_tokens(tok, model)
    eager = HybridEngine(model, tok, engine="eager")
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        gen = torch.Generator().manual_seed(seed)
        for t in (*ctrl.all(), *sorted(eager.eot)):
            head[t] = torch.randn(head.shape[1], generator=gen) * 0.6
    fast = HybridEngine(model, tok, engine="fast")
    fast._static = StaticKV(fast, capacity=64, bucketed=True)  # the graph computation, run eagerly; it grows
    return {"eager": eager, "fast": fast}


@dataclass
class Case:
    seed: int
    engine: str
    arch: str
    mode: str
    prompt: str
    forced: list[int]
    limits: Limits
    sampling: SamplingParams
    pos_mode: str
    context: int | None  # a context limit below the model's, or None

    def describe(self) -> dict[str, Any]:
        return {"seed": self.seed, "engine": self.engine, "arch": self.arch, "mode": self.mode, "prompt": self.prompt,
                "forced": self.forced, "limits": vars(self.limits), "sampling": vars(self.sampling),
                "pos_mode": self.pos_mode, "context": self.context}


def _title(rng: random.Random, titles: list[str]) -> str:
    k = rng.random()
    t = (rng.choice(titles) if titles and k < 0.12 else "" if k < 0.18
         else rng.choice(HEADS) if k < 0.55 else rng.choice(LABELS))
    titles.append(t)
    return t


def random_forced(rng: random.Random, eng: HybridEngine) -> list[int]:
    """A random answer start: titles of every kind, <|para|>, stray control tokens, literal markup, the end.
    Half the cases announce a group first (text, 2-4 titles, mostly <|para|>), then go on at random."""
    c, tok = eng.ctrl, eng.tokenizer
    out: list[int] = []
    titles: list[str] = []
    if rng.random() < 0.5:
        if rng.random() < 0.5:
            out += text_ids(tok, rng.choice(TEXTS + LITERALS))
        for _ in range(rng.randint(2, 4)):
            t = _title(rng, titles)
            out += [c.title, *(text_ids(tok, t) if t else []), c.title_end]
        if rng.random() < 0.8:
            out.append(c.para)
    for _ in range(rng.randint(0, 5)):
        r = rng.random()
        if r < 0.45:
            t = _title(rng, titles)
            out += [c.title, *(text_ids(tok, t) if t else []), c.title_end]
        elif r < 0.6:
            out.append(c.para)
        elif r < 0.72:
            out += text_ids(tok, rng.choice(LITERALS))
        elif r < 0.82:
            out += text_ids(tok, rng.choice(TEXTS))
        elif r < 0.9:
            out.append(rng.choice(c.all()))
        elif r < 0.95:
            out += [c.title, *text_ids(tok, rng.choice(LABELS))]  # a title left open
        else:
            out.append(min(eng.eot))
    return out


def random_case(rng: random.Random, seed: int, engines: dict[str, dict[str, HybridEngine]]) -> Case:
    arch = rng.choice(sorted(engines))
    kind = rng.choice(("eager", "fast"))
    eng = engines[arch][kind]
    forced = random_forced(rng, eng)
    budget = max(1, len(forced) + rng.randint(-4, 24)) if rng.random() < 0.85 else rng.randint(1, 6)
    cap = rng.choice((2, 3, 4, 6, 8, 10, 12, 14, 16, 20))
    lim = Limits(max_new_tokens=budget, max_branches=rng.randint(2, 4), max_branch_tokens=cap,
                 max_groups=rng.randint(1, 3), max_title_tokens=rng.randint(1, 6))
    temp = rng.choice((0.0, 0.8, 1.3, 1.3))
    sp = SamplingParams(temperature=temp, seed=seed, top_k=rng.choice((0, 0, 20)),
                        repetition_penalty=rng.choice((1.0, 1.0, 1.3)))
    prompt = rng.choice(PROMPTS)
    context = len(eng.prompt_ids(prompt)) + rng.randint(2, 40) if rng.random() < 0.15 else None
    mode = "serial" if rng.random() < 0.2 else "hybrid"
    pos = rng.choice(("same-seq", "same-seq", "same-max", "same-re", "predict"))
    return Case(seed, kind, arch, mode, prompt, forced, lim, sp, pos, context)


@dataclass
class Outcome:
    case: Case
    gen: Generation | None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    events: list[Event] = field(default_factory=list)


def run_case(case: Case, engines: dict[str, dict[str, HybridEngine]]) -> Outcome:
    eng = engines[case.arch][case.engine]
    full_context, pos_mode = eng.context, eng.pos_mode
    eng.context = case.context or full_context
    eng.pos_mode = PosMode(case.pos_mode)
    view = ReadingOrderView(eng)
    events: list[Event] = []
    shown: list[str] = []

    def on_event(ev: Event) -> None:
        events.append(ev)
        shown.append(view.push(ev))

    t0 = time.perf_counter()
    try:
        g = eng.generate(case.prompt, mode=case.mode, sampling=case.sampling, limits=case.limits,
                         answer_prefix=case.forced, on_event=on_event, record=True)
    except Exception as e:  # noqa: BLE001 - a crash is a finding, reported with its case
        return Outcome(case, None, [f"crash: {type(e).__name__}: {e}"], time.perf_counter() - t0, events)
    finally:
        eng.context, eng.pos_mode = full_context, pos_mode
    seconds = time.perf_counter() - t0
    problems = check(eng, g, events, "".join(shown), case.limits, case.context or full_context)
    return Outcome(case, g, problems, seconds, events)


def expected_answer(eng: HybridEngine, events: list[Event]) -> tuple[Document, list[int], int]:
    """The answer the events describe, by the rules of `aspd.engine.answer` written out once more: main tokens
    in order; the title markup and <|para|> just before an `open` are the group's, any other is text; control
    tokens and the end of turn are not text; a group is its branches (prefix + sampled tokens) and <|/para|>.
    Also returns how many title tokens ended up as text."""
    tok, c = eng.tokenizer, eng.ctrl
    hidden = set(c.all()) | set(eng.eot)
    ids: list[int] = []
    segments: list[Segment] = []
    main: list[int] = []  # main tokens since the last group
    pending: int | None = None  # where the title markup / <|para|> not yet settled starts in `main`
    in_title = False
    group: tuple[tuple[str, ...], list[list[int]]] | None = None
    as_text = 0

    def serial(run: list[int]) -> None:
        nonlocal as_text
        as_text += run.count(c.title)
        text = tok.decode([t for t in run if t not in hidden], skip_special_tokens=False)
        if text:
            segments.append(Serial(text))

    for ev in events:
        if ev.kind == "open":
            assert pending is not None
            serial(main[:pending])
            main, pending, in_title, group = [], None, False, (ev.titles, [[] for _ in ev.titles])
        elif ev.kind == "close" and group is not None:
            titles, bodies = group
            for t, body in zip(titles, bodies, strict=True):
                ids += [*branch_prefix_ids(tok, c, t), *body]
            ids.append(c.para_end)
            segments.append(Group(tuple(
                Branch(t, branch_body(t, tok.decode([x for x in b if x not in hidden], skip_special_tokens=False)))
                for t, b in zip(titles, bodies, strict=True))))
            group = None
        elif ev.kind == "token" and ev.token is not None:
            t = ev.token
            if ev.stream != MAIN_STREAM:
                assert group is not None
                group[1][ev.stream[1]].append(t)
                continue
            ids.append(t)
            main.append(t)
            if t in eng.eot:
                continue
            if in_title or t in (c.title, c.para):
                pending = len(main) - 1 if pending is None else pending
                in_title = (in_title or t == c.title) and t != c.title_end
            else:
                pending = None
    serial(main)
    return Document(tuple(segments)).normalized(), ids, as_text


def budget_ended_a_branch(eng: HybridEngine, events: list[Event], lim: Limits) -> bool:
    """Whether the budget (not a branch cap) forced some branch to end: at a lockstep step of `live` branches
    after `spent` sampled tokens, only the first max_new_tokens - spent - live of them may go on."""
    spent, fed, prev, step = 0, [], -1, []
    for ev in [*events, Event("done")]:
        if ev.kind == "token" and ev.stream != MAIN_STREAM and ev.stream[1] > prev:
            step.append(ev.stream[1])
            prev = ev.stream[1]
            continue
        if step:  # a step ended: check it, then count its tokens
            go_on = lim.max_new_tokens - spent - len(step)
            for k, b in enumerate(step):
                if k >= go_on and fed[b] + 1 < lim.max_branch_tokens:
                    return True
                fed[b] += 1
            spent += len(step)
            step, prev = [], -1
        if ev.kind == "open":
            fed = [len(branch_prefix_ids(eng.tokenizer, eng.ctrl, t)) for t in ev.titles]
        elif ev.kind == "token":
            if ev.stream != MAIN_STREAM:  # the first token of the next step
                step, prev = [ev.stream[1]], ev.stream[1]
            else:
                spent += 1
    return False


def check(eng: HybridEngine, g: Generation, events: list[Event], shown: str, lim: Limits,
          context: int) -> list[str]:
    """Every invariant `g` breaks (empty when it keeps them all)."""
    out: list[str] = []
    c, tok, st = eng.ctrl, eng.tokenizer, g.stats
    if st.tokens > lim.max_new_tokens:
        out.append(f"budget: {st.tokens} sampled > {lim.max_new_tokens}")
    if st.groups > lim.max_groups or any(not 2 <= n <= lim.max_branches for n in st.branches):
        out.append(f"groups/branches out of limits: {st.branches}")
    per_branch: dict[tuple[int, int], int] = {}
    for _, _, grp, br in g.slots:
        if grp >= 0:
            per_branch[(grp, br)] = per_branch.get((grp, br), 0) + 1
    if any(n > lim.max_branch_tokens for n in per_branch.values()):
        out.append(f"branch cap {lim.max_branch_tokens} exceeded: {sorted(per_branch.values())}")
    if g.slots and max(p for _, p, _, _ in g.slots) >= context:
        out.append("a position past the context")
    if st.forwards > 1 + st.tokens + 2 * st.groups:
        out.append(f"{st.forwards} forwards for {st.tokens} tokens")
    ends = bool(g.answer_ids) and g.answer_ids[-1] in eng.eot
    want = "stop" if ends and not budget_ended_a_branch(eng, events, lim) else "length"
    if g.finish_reason != want:
        out.append(f"finish_reason {g.finish_reason!r}, expected {want!r}")
    markup = g.markup_text()
    if markup is None:
        out.append("markup does not render")
    elif parse(markup) != g.doc.normalized():
        out.append("markup does not parse back to doc")
    if flatten(g.doc) != g.text:
        out.append("text != flatten(doc)")
    if shown != g.text:
        out.append(f"stream {shown!r} != text {g.text!r}")
    strings = [*c.names.all(), *(tok.convert_ids_to_tokens(t) for t in eng.eot)]
    if any(s in g.text for s in strings):
        out.append(f"control token in text {g.text!r}")
    if g.raw != tok.decode(g.answer_ids, skip_special_tokens=False):
        out.append("raw != decoded answer_ids")
    doc, ids, _ = expected_answer(eng, events)
    if (doc, ids) != (g.doc.normalized(), g.answer_ids):
        out.append(f"doc/ids differ from the events' reading: {doc} / {g.doc}")
    rebuilt = AnswerBuilder(tok, c, eng.eot)
    for ev in events:
        if ev.kind == "open":
            rebuilt.open(ev.titles)
        elif ev.kind == "close":
            rebuilt.close()
        elif ev.kind == "token" and ev.token is not None:
            rebuilt.main(ev.token) if ev.stream == MAIN_STREAM else rebuilt.branch(ev.stream[1], ev.token)
    if rebuilt.finish() != (g.doc, g.answer_ids):
        out.append("the event log's rebuild differs from the engine's answer")
    return out


def _dropped_titles(eng: HybridEngine, events: list[Event]) -> bool:
    """Some group was announced with more titles than it has branches (duplicates, empty, too long, too many)."""
    c, announced, in_title = eng.ctrl, 0, False
    for ev in events:
        if ev.kind == "open" and announced > len(ev.titles):
            return True
        if ev.kind != "token" or ev.stream != MAIN_STREAM or ev.token is None:
            announced = 0 if ev.kind == "open" else announced
            continue
        t = ev.token
        if not in_title and t not in (c.title, c.para):
            announced = 0
        announced += t == c.title and not in_title
        in_title = (in_title or t == c.title) and t != c.title_end
    return False


def run_fuzz(n: int, seed: int = 0, archs: tuple[str, ...] = ARCHS,
             engines: dict[str, dict[str, HybridEngine]] | None = None) -> dict[str, Any]:
    """n random cases; a summary with counts of what was exercised and the failing cases (if any)."""
    engines = engines or {a: biased_engines(a) for a in archs}
    rng = random.Random(seed)
    failures: list[dict[str, Any]] = []
    count: dict[str, int] = {}
    worst = 0.0

    def bump(key: str, yes: bool = True) -> None:
        if yes:
            count[key] = count.get(key, 0) + 1

    for i in range(n):
        case = random_case(rng, seed * 1_000_003 + i, engines)
        res = run_case(case, engines)
        worst = max(worst, res.seconds)
        bump(f"engine_{case.engine}")
        bump(f"mode_{case.mode}")
        bump(f"arch_{case.arch}")
        if res.problems:
            failures.append({**case.describe(), "problems": res.problems})
            continue
        g = res.gen
        assert g is not None
        bump(f"finish_{g.finish_reason}")
        bump("with_groups", g.stats.groups > 0)
        bump("titles_as_text", expected_answer(engines[case.arch][case.engine], res.events)[2] > 0)
        bump("literal_markup_escaped", "&lt;" in (g.markup_text() or ""))
        bump("budget_ended_a_branch", budget_ended_a_branch(engines[case.arch][case.engine], res.events, case.limits))
        bump("head_title_branches", any(is_head(t) for grp in g.doc.groups for t in grp.titles))
        bump("titles_dropped_from_a_group", _dropped_titles(engines[case.arch][case.engine], res.events))
        bump("context_limited", case.context is not None)
        bump("budget_used_up", g.stats.tokens == case.limits.max_new_tokens)
        bump("length_before_budget", g.finish_reason == "length" and g.stats.tokens < case.limits.max_new_tokens)
    return {"cases": n, "seed": seed, "failures": len(failures), "failing_cases": failures[:20],
            "exercised": dict(sorted(count.items())), "slowest_case_seconds": round(worst, 3)}

