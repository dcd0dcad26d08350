"""Issue #16: what the engine emits is always well-formed, and `stop` means stop.

Each regression test forces a stream through the real decoding loop of a tiny model and checks it with the
invariant checker of `aspd.testing.fuzz` (which also checks the reading-order stream and the server's rebuild
from events), plus the specific outcome. The last test is the CI-sized random fuzz run;
`benchmarks/engine_fuzz.py` runs the long one.
"""

from __future__ import annotations

import pytest
import torch

from aspd.engine import HybridEngine, Limits
from aspd.engine.core import Event
from aspd.engine.stream import ReadingOrderView
from aspd.markup import parse
from aspd.testing import tiny_model, tiny_tokenizer
from aspd.testing.fuzz import check, run_fuzz
from aspd.tokens import add_control_tokens, branch_prefix_ids, text_ids

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def eng() -> HybridEngine:
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    add_control_tokens(tok, model)  # control rows at the mean: the model only writes what is forced
    return HybridEngine(model, tok, engine="eager")


def titles_ids(eng: HybridEngine, *titles: str) -> list[int]:
    c, out = eng.ctrl, []
    for t in titles:
        out += [c.title, *text_ids(eng.tokenizer, t), c.title_end]
    return out


def generate(eng: HybridEngine, forced: list[int], lim: Limits, **kw):
    """(generation, invariant problems)."""
    events: list[Event] = []
    view = ReadingOrderView(eng)
    shown: list[str] = []

    def on_event(ev: Event) -> None:
        events.append(ev)
        shown.append(view.push(ev))

    g = eng.generate("Give me three tips for staying healthy.", answer_prefix=forced, limits=lim,
                     on_event=on_event, record=True, **kw)
    return g, check(eng, g, events, "".join(shown), lim, eng.context)


def test_no_budget_for_the_announced_group_is_length_not_stop(eng: HybridEngine) -> None:
    """Titles announced, then too little budget for <|para|> and the branch ends: the model (here forced) ends
    its turn, but the answer was cut by the budget. The titles are text in doc, text and raw alike."""
    eot = min(eng.eot)
    forced = [*titles_ids(eng, "Diet", "Sleep", "Work"), eot]
    lim = Limits(max_new_tokens=len(forced) + 1, max_branch_tokens=8)  # <|para|> + 3 ends need 4 more
    g, problems = generate(eng, forced, lim)
    assert problems == []
    assert g.finish_reason == "length" and g.stats.groups == 0
    assert g.text == "DietSleepWork" and "<|title|>Work<|/title|>" in g.raw
    # With room for the group, the same end of turn after the titles is a real stop.
    g, problems = generate(eng, forced, Limits(max_new_tokens=40, max_branch_tokens=8))
    assert problems == [] and g.finish_reason == "stop" and g.text == "DietSleepWork"


@pytest.mark.parametrize("tail", ["text", "eot", "open"])
def test_titles_that_open_no_group_are_text_without_control_tokens(eng: HybridEngine, tail: str) -> None:
    """One title then text, titles then the end of turn, a title left open: text, and the stream agrees."""
    c, tok, eot = eng.ctrl, eng.tokenizer, min(eng.eot)
    if tail == "text":
        forced, want = [*titles_ids(eng, "Note"), *text_ids(tok, " habits matter"), eot], "Note habits matter"
    elif tail == "eot":
        forced, want = [*text_ids(tok, "Tips:"), *titles_ids(eng, "1. Diet", "2. Sleep"), eot], "Tips:1. Diet2. Sleep"
    else:
        forced, want = [*text_ids(tok, "Tips:"), c.title, *text_ids(tok, "Diet"), eot], "Tips:Diet"
    g, problems = generate(eng, forced, Limits(max_new_tokens=40, max_branch_tokens=8))
    assert problems == []
    assert g.text == want and g.finish_reason == "stop"


def test_literal_markup_in_the_answer_renders_and_parses_back(eng: HybridEngine) -> None:
    tok = eng.tokenizer
    forced = [*text_ids(tok, "Close it with </branch> or <branchgroup>; &lt;/branch> too."), min(eng.eot)]
    g, problems = generate(eng, forced, Limits(max_new_tokens=len(forced)))
    assert problems == []
    markup = g.markup_text()
    assert markup is not None and parse(markup) == g.doc
    assert g.text == "Close it with </branch> or <branchgroup>; &lt;/branch> too."


def test_a_title_whose_prefix_exceeds_the_branch_cap_makes_no_branch(eng: HybridEngine) -> None:
    """The cap counts the engine-inserted prefix and the end: a title that cannot fit is dropped like an extra
    title, so every branch stays within the cap."""
    c, tok = eng.ctrl, eng.tokenizer
    long_title = "1. **Diet**:"
    cap = 8
    assert len(branch_prefix_ids(tok, c, long_title)) + 1 > cap
    forced = [*titles_ids(eng, long_title, "Sleep", "Work"), c.para]
    g, problems = generate(eng, forced, Limits(max_new_tokens=40, max_branch_tokens=cap))
    assert problems == []
    assert g.doc.groups and g.doc.groups[0].titles == ("Sleep", "Work")
    # No title fits: no group, and the forced <|para|> is not text either.
    g, problems = generate(eng, [*titles_ids(eng, long_title, "2. **Sleep**:"), c.para], Limits(
        max_new_tokens=30, max_branch_tokens=cap))
    assert problems == [] and g.stats.groups == 0 and g.text.startswith("1. **Diet**:2. **Sleep**:")


def test_predicted_positions_never_run_past_the_context() -> None:
    """pos-mode predict reserves scale x guess positions per branch: the group only opens if those fit."""
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    model.config.max_position_embeddings = 96
    add_control_tokens(tok, model)
    eng = HybridEngine(model, tok, engine="eager", pos_mode="predict", predicted_length=20, predict_scale=2.0)
    forced = [*titles_ids(eng, "Diet", "Sleep"), eng.ctrl.para]
    g, problems = generate(eng, forced, Limits(max_new_tokens=60, max_branch_tokens=8))
    assert problems == []
    assert g.stats.groups == 0 and g.finish_reason == "length"  # 2 x 40 positions do not fit
    assert max(p for _, p, _, _ in g.slots) < 96


def test_a_branch_ended_by_the_budget_makes_the_answer_length() -> None:
    """The budget forces the last branch to end at once; the others end by themselves, and the main stream then
    ends the turn with budget left: still `length`, since the budget cut a branch short."""
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    ctrl = add_control_tokens(tok, model)
    eng = HybridEngine(model, tok, engine="eager")
    head = model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():  # every stream prefers to end: branches write <|/branch|>, the main stream ends its turn
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[[ctrl.branch_end, *eng.eot]] = 100.0
    model.set_output_embeddings(biased)
    forced = [*titles_ids(eng, "Diet", "Sleep", "Work"), ctrl.para]
    lim = Limits(max_new_tokens=len(forced) + 5, max_branch_tokens=8)  # 5 left: only 2 of 3 branches may go on
    g, problems = generate(eng, forced, lim)
    assert problems == []
    assert g.stats.groups == 1 and g.answer_ids[-1] in eng.eot and g.stats.tokens < lim.max_new_tokens
    assert g.finish_reason == "length"
    # With budget for every branch to go on, the same answer is a stop.
    g, problems = generate(eng, forced, Limits(max_new_tokens=len(forced) + 7, max_branch_tokens=8))
    assert problems == [] and g.finish_reason == "stop" and g.stats.groups == 1


def test_fuzz_random_control_streams_keep_every_invariant() -> None:
    """CI size: random streams on every tiny architecture, both engines, hybrid and serial (see aspd.testing.fuzz)."""
    result = run_fuzz(60, seed=7)
    assert result["failures"] == 0, result["failing_cases"]
    seen = result["exercised"]
    for key in ("engine_eager", "engine_fast", "mode_serial", "mode_hybrid", "finish_stop", "finish_length",
                "with_groups", "titles_as_text", "literal_markup_escaped"):
        assert seen.get(key, 0) > 0, (key, seen)
