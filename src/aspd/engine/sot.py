"""Skeleton-of-Thought (SoT) on the hybrid engine: a baseline that needs no fine-tuning.

Stage 1 asks the model for a short numbered outline and decodes it serially. Stage 2 asks it to write the
answer from that outline and forces `<|title|>p1<|/title|>...<|title|>pN<|/title|><|para|>` plus an
end-of-turn id as the answer prefix: the engine then opens one group, decodes every point's paragraph in
parallel (siblings invisible, one forward per step), closes the group and stops at the forced end of turn.
With fewer than two usable points the original question gets an ordinary serial answer instead.

`SotRun` is the decoder, stepped like the others (so batched beside other requests): each stage is a
sub-decoder on the request's own cache view, which it starts afresh.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from aspd.engine.core import Draw, Feed, Stepped, Steps
from aspd.engine.kv import DynamicKV, Slots
from aspd.engine.sampling import SamplingParams
from aspd.engine.types import Event, Generation, Limits, Stats
from aspd.markup import Branch, Document, Group, Serial
from aspd.sample import Message, end_of_turn_ids
from aspd.tokens import text_ids

if TYPE_CHECKING:
    from aspd.engine.core import HybridEngine

__all__ = [
    "SKELETON_MAX_TOKENS",
    "SotRun",
    "assemble",
    "expansion_messages",
    "generate_sot",
    "parse_skeleton",
    "reservation_sot",
    "skeleton_messages",
]

SKELETON_MAX_TOKENS = 128  # an outline of at most 8 short points fits easily
MIN_BRANCH_TOKENS = 8  # below this a point's paragraph cannot say anything: answer serially instead

_SKELETON_PROMPT = (
    "Plan an answer to the question below, but do not write the answer itself. Reply with an outline only: "
    "a numbered list (1., 2., 3., ...) of 3 to 8 points, one per line, each point a short phrase of a few "
    "words. No explanations, no introduction, nothing after the list.\n\n"
    "Question: {question}"
)

_EXPANSION_PROMPT = (
    "Answer the question below by following the outline under it. Every point of the outline gets its own "
    "short paragraph of one to three sentences about that point alone; the other points are written "
    "separately, so do not repeat them and do not number anything. Each paragraph begins right after the "
    "name of its point and a colon.\n\n"
    "Question: {question}\n\n"
    "Outline:\n{outline}"
)

# ------------------------------------------------------------------ prompts


def _wrap_last_user(prompt: str | Sequence[Message], make: Callable[[str], str]) -> list[Message]:
    """Rewrite the last user turn with `make`, keeping every other turn (system prompt, history) as it was."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": make(prompt)}]
    msgs = [dict(m) for m in prompt]
    for m in reversed(msgs):
        if m.get("role") == "user":
            m["content"] = make(m["content"])
            return msgs
    raise ValueError("Skeleton-of-Thought needs a user message to answer")


def _outline(points: Sequence[str]) -> str:
    return "\n".join(f"{i}. {p}" for i, p in enumerate(points, 1))


def skeleton_messages(prompt: str | Sequence[Message]) -> list[Message]:
    """The stage-1 chat: the question (last user turn) wrapped in a request for an outline only."""
    return _wrap_last_user(prompt, lambda q: _SKELETON_PROMPT.format(question=q.strip()))


def expansion_messages(prompt: str | Sequence[Message], points: Sequence[str]) -> list[Message]:
    """The stage-2 chat: the question and its outline, asking for one short paragraph per point."""
    outline = _outline(points)
    return _wrap_last_user(prompt, lambda q: _EXPANSION_PROMPT.format(question=q.strip(), outline=outline))


# ------------------------------------------------------------------ skeleton parsing

_CONTROL = re.compile(r"<\|[^<>|\s]*\|>")  # control tokens an ASPD model may have written
_NUMBER = re.compile(r"\(?(\d{1,2})[.)](?!\d)\s*|(\d{1,2}):\s+|(?:step|point)\s+(\d{1,2})\s*[.):-]?\s+", re.I)
_LETTER = re.compile(r"\(?[A-Za-z][.)]\s+")
_BULLET = re.compile(r"[-*+\u2022\u2023\u25e6\u2013\u2014]\s+")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_TRAIL = " \t.,;:-\u2013\u2014"
_PLAIN_MAX_WORDS = 10  # unmarked lines count as points only when every one is this short


def _clean(text: str) -> str:
    """Markdown and list noise out, one line, no trailing punctuation (the engine adds "Title:")."""
    text = _LINK.sub(r"\1", text)
    text = text.replace("**", "").replace("__", "").replace("`", "").replace("*", "")
    text = " ".join(text.split()).strip(_TRAIL)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip(_TRAIL)
    return text


def _split_inline(rest: str, first: int) -> list[str]:
    """`1. A 2. B 3. C` on one line: cut only at the next number in sequence (`1. Add 5. Stir` stays whole)."""
    out, want = [], first + 1
    while True:
        m = re.search(rf"\s\(?{want}[.)](?!\d)\s+", rest)
        if m is None:
            return [*out, rest]
        out.append(rest[: m.start()])
        rest, want = rest[m.end():], want + 1


def parse_skeleton(text: str, max_points: int = 8) -> list[str]:
    """The points of an outline, in order: numbered (`1.`, `1)`, `(1)`, `Step 1:`), bulleted or lettered items.

    The top level wins: the first item at the smallest indentation sets the kind, and only items of that kind
    at that indentation count (sub-points are dropped). Without any list markers, short plain lines count
    when every line is short (a prose answer is not an outline). Markdown is stripped, an explanation after
    `: ` or ` - ` dropped, empty and duplicate (case-insensitive) points dropped, at most `max_points` kept.
    """
    items: list[tuple[int, str, str]] = []  # (indent, kind, text)
    plain: list[str] = []
    for raw in _CONTROL.sub("\n", text).splitlines():  # a control token separates what it sits between
        line = raw.replace("\t", "    ")
        indent = len(line) - len(line.lstrip())
        s = re.sub(r"^#+\s*", "", line.strip())
        s = re.sub(r"^(\*\*|__)(?=\(?\d|[A-Za-z][.)])", "", s)  # "**1. Diet**": the marker sits inside bold
        if not s:
            continue
        if m := _NUMBER.match(s):
            first = int(next(g for g in m.groups() if g is not None))
            items += [(indent, "number", part) for part in _split_inline(s[m.end():], first)]
        elif m := _BULLET.match(s):
            items.append((indent, "bullet", s[m.end():]))
        elif m := _LETTER.match(s):
            items.append((indent, "letter", s[m.end():]))
        elif not s.rstrip().endswith(":"):  # "Outline:" and the like are headers, not points
            plain.append(s)
    if items:
        top = min(i for i, _, _ in items)
        kind = next(k for i, k, _ in items if i == top)
        chosen = [t for i, k, t in items if i == top and k == kind]
    elif all(len(p.split()) <= _PLAIN_MAX_WORDS for p in plain):
        chosen = plain
    else:
        chosen = []
    return _distinct([_head(t) for t in chosen], max_points)


def _head(item: str) -> str:
    """`Diet: eat more greens` -> `Diet`: a point is a title, and models like to explain it after a colon."""
    text = _clean(item)
    m = re.search(r":\s|\s[-\u2013\u2014]\s", text)
    return _clean(text[: m.start()]) if m and m.start() > 0 else text


def _distinct(items: Sequence[str], max_points: int) -> list[str]:
    """Cleaned, non-empty, case-insensitively distinct, at most `max_points`."""
    points: list[str] = []
    seen: set[str] = set()
    for t in items:
        p = _clean(t)
        if p and p.casefold() not in seen:
            seen.add(p.casefold())
            points.append(p)
    return points[:max_points]


# ------------------------------------------------------------------ answer


def assemble(points: Sequence[str], expansions: Sequence[str]) -> str:
    """`1. Point: expansion` lines; a point that already ends a sentence ("?", "!") takes no colon."""
    lines = []
    for i, (p, x) in enumerate(zip(points, expansions, strict=True), 1):
        x = x.strip()
        if not x:
            lines.append(f"{i}. {p}")
        else:
            lines.append(f"{i}. {p}{'' if p.endswith(('?', '!')) else ':'} {x}")
    return "\n".join(lines)


def _as_titles(tokenizer: Any, points: Sequence[str], max_tokens: int) -> list[str]:
    """Points as the engine will see them: within the title budget (whole words dropped from the end) and
    distinct after the tokenizer's round trip, so that the forced group always opens with every point."""
    out: list[str] = []
    for p in points:
        words = p.split()
        while len(words) > 1 and len(text_ids(tokenizer, " ".join(words))) > max_tokens:
            words.pop()
        title = " ".join(tokenizer.decode(text_ids(tokenizer, " ".join(words)), skip_special_tokens=True).split())
        if title and title not in out:
            out.append(title)
    return out


def _skeleton_budget(lim: Limits) -> int:
    return max(1, min(SKELETON_MAX_TOKENS, lim.max_new_tokens // 4))


def generate_sot(
    engine: HybridEngine,
    prompt: str | Sequence[Message],
    *,
    sampling: SamplingParams | None = None,
    limits: Limits | None = None,
    on_event: Callable[[Event], None] | None = None,
    skeleton: Sequence[str] | None = None,
    skeleton_prefix: Sequence[int] | None = None,
    record: bool = False,
) -> Generation:
    """Answer `prompt` (text, or chat messages whose last user turn is the question) with Skeleton-of-Thought,
    alone (`SotRun` is the decoder; batched, `aspd.engine.batch` steps it beside other requests).

    `limits.max_new_tokens` covers both stages: the skeleton takes at most a quarter of it (and at most
    SKELETON_MAX_TOKENS), the points share what is left. `limits.max_branches` caps the points.
    `on_event` sees the answer stage only (the expansion group, or the serial fallback): the skeleton is
    a plan, not part of the answer. Streamed, the expansions read like an ASPD group (bodies only); the
    returned text adds the `N. Point:` heads (`assemble`).
    `skeleton` gives the points outright (stage 1 is skipped); `skeleton_prefix` forces ids at the start of
    the stage-1 answer, like `generate(answer_prefix=...)`; by default it is "1.", which holds even a small
    model to a numbered list (SoT's own skeleton prompt ends in the same partial answer). `record` keeps the
    answer stage's slots and logits.

    The result's stats cover both stages: tokens = skeleton + answer-stage sampled tokens (stage 2's forced
    titles excluded), seconds = wall time of both, forwards and prefill summed, groups from stage 2.
    """
    sp, lim = sampling or SamplingParams(), limits or Limits()
    return engine.alone(lambda kv: SotRun(engine, prompt, kv, sp, lim, on_event, skeleton=skeleton,
                                          skeleton_prefix=skeleton_prefix, record=record),
                        reservation_sot(engine, prompt, lim))


def reservation_sot(engine: HybridEngine, prompt: str | Sequence[Message], lim: Limits) -> int:
    """Cache slots a SoT answer may take at once: the larger stage (each stage gives its slots back before the
    next starts). Stage 2's prompt holds the outline and its answer the forced titles and the branch prefixes,
    each at most a title's tokens and a few more per point."""
    skeleton = len(engine.prompt_ids(skeleton_messages(prompt))) + _skeleton_budget(lim)
    per_point = 3 * (lim.max_title_tokens + 4)  # in the outline, among the forced titles, as a branch prefix
    expansion = len(engine.prompt_ids(expansion_messages(prompt, []))) + lim.max_branches * per_point + 2
    return max(skeleton, expansion) + lim.max_new_tokens + 1


class SotRun(Stepped):
    """Skeleton-of-Thought as a stepped decoder on one cache view: the skeleton is a serial sub-decoder, then
    (its slots given back) the expansion a hybrid one with the points forced as one group, or the question a
    serial one. A model never trained on the control tokens reads them as text through `_controls_as_text`,
    in this request's feeds and logits only: the shared model is never changed."""

    def __init__(self, engine: HybridEngine, prompt: str | Sequence[Message], kv: DynamicKV | Slots,
                 sampling: SamplingParams, limits: Limits, on_event: Callable[[Event], None] | None, *,
                 skeleton: Sequence[str] | None = None, skeleton_prefix: Sequence[int] | None = None,
                 record: bool = False):
        self.e, self.prompt, self.kv, self.sp, self.lim = engine, prompt, kv, sampling, limits
        self.on_event, self.record = on_event, record
        self.skeleton, self.skeleton_prefix = skeleton, skeleton_prefix
        _wrap_last_user(prompt, str)  # a prompt without a user turn fails here, before any forward

    def stage(self, ids: list[int], mode: str, limits: Limits, answer_prefix: Sequence[int] = (),
              on_event: Callable[[Event], None] | None = None,
              record: bool = False) -> Steps:
        """One stage as a sub-decoder on this request's cache view, which it starts afresh."""
        self.kv.clear()
        run = self.e.decoder(ids, self.kv, mode=mode, sampling=self.sp, limits=limits,
                             answer_prefix=answer_prefix, on_event=on_event, record=record)
        return run.steps()

    def steps(self) -> Steps:
        e, lim, prompt = self.e, self.lim, self.prompt
        tok = e.tokenizer
        t0 = time.perf_counter()
        skel: Generation | None = None
        if self.skeleton is None:
            prefix = text_ids(tok, "1.") if self.skeleton_prefix is None else self.skeleton_prefix
            skel = yield from self.stage(e.prompt_ids(skeleton_messages(prompt)), "serial",
                                         Limits(max_new_tokens=_skeleton_budget(lim)), list(prefix))
            points = parse_skeleton(skel.text, lim.max_branches)
            if skel.finish_reason == "length" and len(points) > 2:
                points = points[:-1]  # cut off mid-point by the budget
            skel_raw = skel.raw
        else:
            points = _distinct(self.skeleton, lim.max_branches)
            skel_raw = _outline(self.skeleton)
        points = _as_titles(tok, points, lim.max_title_tokens)
        remaining = max(0, lim.max_new_tokens - (skel.stats.tokens if skel else 0))

        if len(points) >= 2:
            exp = yield from self.expand(points, remaining)
            if exp is not None:
                group = exp.doc.groups[0]
                titles = [b.title for b in group.branches]
                text = assemble(titles, [b.text for b in group.branches])
                doc = Document((Group(tuple(Branch(b.title, b.text) for b in group.branches)),))
                raw = f"[skeleton]\n{skel_raw}\n[expansion]\n{exp.raw}"
                return _result(e, skel, exp, exp.stats.parallel_tokens, text, doc, raw, t0)

        # Not an outline, or no room (context, budget) for a group: the original question, answered serially.
        ans = yield from self.stage(e.prompt_ids(prompt), "serial", replace(lim, max_new_tokens=remaining),
                                    on_event=self.on_event, record=self.record)
        doc = Document((Serial(ans.text),)) if ans.text else Document(())
        raw = f"[skeleton]\n{skel_raw}\n[serial]\n{ans.raw}"
        return _result(e, skel, ans, ans.stats.tokens, ans.text, doc, raw, t0)

    def expand(self, points: list[str], remaining: int) -> Generator[Feed | Draw, Any, Generation | None]:
        """Stage 2: one forced group of the points; None when the group cannot open (too little context)."""
        e, lim = self.e, self.lim
        c, tok = e.ctrl, e.tokenizer
        ids = e.prompt_ids(expansion_messages(self.prompt, points))
        forced: list[int] = []
        for p in points:
            forced += [c.title, *text_ids(tok, p), c.title_end]
        # The end of turn after <|para|> is popped by the first main draw after the group closes.
        forced += [c.para, end_of_turn_ids(tok)[0]]
        # The engine opens a group only if every branch fits the context at its full cap: shrink the cap to fit.
        room = e.context - len(ids) - len(forced) - 2
        cap = min(lim.max_branch_tokens, room // len(points))
        if cap < MIN_BRANCH_TOKENS or remaining < 2 * len(points):
            return None
        # Forced tokens count as sampled in the engine, so they go on top of the branches' share (the engine keeps
        # one token of it for each branch's end).
        exp_lim = replace(lim, max_new_tokens=len(forced) - 1 + remaining, max_branch_tokens=cap, max_groups=1)
        steps = self.stage(ids, "hybrid", exp_lim, forced, self.on_event, self.record)
        exp = yield from (steps if e.is_aspd_model else _controls_as_text(e, steps))
        return exp if exp.stats.groups == 1 else None


def _controls_as_text(engine: HybridEngine, steps: Steps) -> Steps:
    """For a model never trained on the control tokens, feed ids of tokens it knows in their place.

    Their own rows sit at the mean embedding, which such a model reads as noise: it tends to end a point right
    after `<|branch|>Title:`. The structural tokens are fed as the line break, so the prompt reads like a plain
    outline; `<|/branch|>` as the end of turn. With a tied head their logits are those tokens' too, so that a
    point ends where the model would end an answer (the other control tokens are banned inside a branch,
    whatever their logits). This is what borrowing those tokens' embedding rows would do, for this request
    alone: the decoder still sees (and records) the control ids it asked for.
    """
    c, tok = engine.ctrl, engine.tokenizer
    newline, eot = text_ids(tok, "\n")[-1], min(engine.eot)
    as_text = {t: newline for t in c.all()} | {c.branch_end: eot}
    model = engine.model
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    controls = torch.tensor(c.all(), device=engine.device)
    feed = next(steps)
    while True:
        if isinstance(feed, Draw):  # sampled tokens pass through: the decoder reads the control ids it drew
            got = yield feed
        else:
            got = yield replace(feed, ids=[as_text.get(t, t) for t in feed.ids])
            if tied:
                text = got[:, [newline, eot]]  # a copy: the driver's tensor may hold other requests' rows too
                got = got.clone()
                got[:, controls] = text[:, :1]
                got[:, c.branch_end] = text[:, 1]
        try:
            feed = steps.send(got)
        except StopIteration as end:
            return end.value


def _result(engine: HybridEngine, skel: Generation | None, ans: Generation, answer_tokens: int, text: str,
            doc: Document, raw: str, t0: float) -> Generation:
    """One Generation for both stages: counts summed, wall time from the start of stage 1."""
    s1 = skel.stats if skel is not None else Stats()
    s2 = ans.stats
    stats = Stats(
        tokens=s1.tokens + answer_tokens,
        parallel_tokens=s2.parallel_tokens,
        forwards=s1.forwards + s2.forwards,
        seconds=time.perf_counter() - t0,
        parallel_seconds=s2.parallel_seconds,
        prefill_tokens=s1.prefill_tokens + s2.prefill_tokens,
        branches=list(s2.branches),
        visible_tokens=len(text_ids(engine.tokenizer, text)) if text else 0,
    )
    return Generation(doc, text, raw, stats, ans.finish_reason, ans.answer_ids, ans.slots, ans.logits)
