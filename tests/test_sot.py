"""Skeleton-of-Thought: outline parsing, answer assembly, and the two-stage decode on tiny random models."""

import pytest
import torch
from transformers import GenerationConfig

from aspd.bench.metrics import abn, dp, ppd
from aspd.engine import HybridEngine, Limits
from aspd.engine.sot import assemble, expansion_messages, generate_sot, parse_skeleton, skeleton_messages
from aspd.markup import Group, Serial, render
from aspd.sample import end_of_turn_ids
from aspd.testing import tiny_model, tiny_tokenizer
from aspd.tokens import add_control_tokens, branch_prefix_ids, text_ids

pytestmark = pytest.mark.usefixtures("one_thread")

# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize("text,points", [
    ("1. Diet\n2. Sleep\n3. Work", ["Diet", "Sleep", "Work"]),
    ("1) Diet\n2) Sleep", ["Diet", "Sleep"]),
    ("(1) Diet\n(2) Sleep", ["Diet", "Sleep"]),
    ("1.Diet\n2.Sleep", ["Diet", "Sleep"]),
    ("- Diet\n* Sleep\n\u2022 Work\n+ Play", ["Diet", "Sleep", "Work", "Play"]),
    ("A. Diet\nB) Sleep", ["Diet", "Sleep"]),
    ("Step 1: Preheat the oven\nStep 2: Mix the flour", ["Preheat the oven", "Mix the flour"]),
    # Preamble, closing remarks and blank lines around the list are not points.
    ("Sure! Here is the outline:\n\n1. Eat well.\n2. Sleep enough\n\nGood luck with it all!",
     ["Eat well", "Sleep enough"]),
    # Markdown: bold (also around the marker), headings, code, links, quotes, trailing punctuation.
    ("**1. Diet**\n**2. Sleep:**", ["Diet", "Sleep"]),
    ("### 1. Diet\n### 2. Sleep", ["Diet", "Sleep"]),
    ("1. __Eat__ *more* `greens`;\n2. [Python](https://python.org) basics\n3. \"Rest\"",
     ["Eat more greens", "Python basics", "Rest"]),
    # A point is its head: explanations after ": " or " - " go (but not colons inside words or times).
    ("1. Diet: eat more vegetables\n2. **Sleep** - at least seven hours\n3. Wake at 6:30\n4. See http://x.org",
     ["Diet", "Sleep", "Wake at 6:30", "See http://x.org"]),
    # The top level wins: indented sub-points and other marker kinds under it are dropped.
    ("1. Diet\n   - vegetables\n   - fruit\n2. Sleep\n   a) eight hours\n\t3) nested", ["Diet", "Sleep"]),
    ("- Diet\n  1. vegetables\n- Sleep", ["Diet", "Sleep"]),
    # One line holding the whole list is cut at the numbers in sequence only.
    ("1. Eat a balanced diet. 2. Exercise regularly. 3. Sleep well.",
     ["Eat a balanced diet", "Exercise regularly", "Sleep well"]),
    ("1. Add 5. Stir\n2. Serve", ["Add 5. Stir", "Serve"]),
    # Decimals and times are not markers.
    ("1.5 kg of flour\n- sugar\n- eggs", ["sugar", "eggs"]),
    # Empty items and duplicates (case-insensitive, after cleaning) go.
    ("1. Diet\n2.\n3. **diet**\n4. Sleep\n5. -", ["Diet", "Sleep"]),
    # Control tokens an ASPD model may write are not text.
    ("<|title|>1. Diet<|/title|>\n2. Sleep<|para|>", ["Diet", "Sleep"]),
    ("1. Diet<|para|>2. Sleep", ["Diet", "Sleep"]),
    # Without markers: short lines count, headers ending in ':' do not.
    ("Outline:\nDiet\nSleep\nExercise", ["Diet", "Sleep", "Exercise"]),
    ("Diet\r\nSleep\r\n", ["Diet", "Sleep"]),
    # ... but prose is not an outline.
    ("Staying healthy takes a handful of habits that reinforce each other over many years.\nEat well.", []),
    ("", []),
    ("   \n\n", []),
    ("1.", []),
    ("Just answer it directly.", ["Just answer it directly"]),
])
def test_parse_skeleton(text, points):
    assert parse_skeleton(text) == points


def test_parse_skeleton_caps_the_points():
    text = "\n".join(f"{i}. Point {i}" for i in range(1, 13))
    assert parse_skeleton(text) == [f"Point {i}" for i in range(1, 9)]
    assert parse_skeleton(text, max_points=3) == ["Point 1", "Point 2", "Point 3"]


def test_assemble():
    text = assemble(["Diet", "Sleep", "Why rest?", "Work"],
                    ["Eat vegetables.", "  Eight hours.\n", "It restores you.", ""])
    assert text == "1. Diet: Eat vegetables.\n2. Sleep: Eight hours.\n3. Why rest? It restores you.\n4. Work"


def test_prompts_wrap_the_last_user_turn_and_keep_the_rest():
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "  Give tips. "}]
    for msgs in (skeleton_messages(history), expansion_messages(history, ["Diet", "Sleep"])):
        assert msgs[:3] == history[:3]
        assert msgs[3]["role"] == "user" and "Give tips." in msgs[3]["content"]
    assert history[3]["content"] == "  Give tips. "  # the caller's messages are not modified
    assert "1. Diet\n2. Sleep" in expansion_messages("Give tips.", ["Diet", "Sleep"])[0]["content"]
    assert skeleton_messages("Q?") == [{"role": "user", "content": skeleton_messages([{"role": "user",
                                                                                       "content": "Q?"}])[0]["content"]}]
    with pytest.raises(ValueError):
        skeleton_messages([{"role": "system", "content": "x"}])


# ------------------------------------------------------------------ decoding


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    ctrl = add_control_tokens(tok, model)  # a plain model: control rows at the mean embedding
    with torch.no_grad():  # nor does it end its turn (a random model would, anywhere): branches reach their cap
        head = model.get_output_embeddings().weight
        head[end_of_turn_ids(tok)[0]] = head[: ctrl.title].mean(0)
    return model, tok, ctrl


QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Give tips."}]


def forced_skeleton(tok, text: str) -> list[int]:
    return [*text_ids(tok, text), end_of_turn_ids(tok)[0]]


@pytest.mark.parametrize("engine", ["eager", "fast"])
def test_sot_branches_are_isolated_and_stats_add_up(tiny, engine):
    model, tok, ctrl = tiny
    eng = HybridEngine(model, tok, engine=engine)
    skel = forced_skeleton(tok, "Here:\n1. Eat a balanced diet.\n2. **Sleep** well\n3. Exercise regularly\n")
    lim = Limits(max_new_tokens=200, max_branch_tokens=24)
    g = generate_sot(eng, QUESTION, limits=lim, skeleton_prefix=skel, record=True)
    titles = ["Eat a balanced diet", "Sleep well", "Exercise regularly"]
    assert g.stats.groups == 1 and g.stats.branches == [3] and g.finish_reason == "stop"
    assert [b.title for b in g.doc.groups[0].branches] == titles

    # Stage 2 is exactly the engine's own group with the titles forced, then the forced end of turn.
    forced = [t for p in titles for t in (ctrl.title, *text_ids(tok, p), ctrl.title_end)] + [ctrl.para]
    eot = end_of_turn_ids(tok)[0]
    direct = eng.generate(expansion_messages(QUESTION, titles), answer_prefix=[*forced, eot], record=True,
                          limits=Limits(max_new_tokens=len(forced) + 200 - len(skel) - 3, max_branch_tokens=24))
    assert g.answer_ids == direct.answer_ids and g.answer_ids[-1] == eot
    assert g.slots == direct.slots

    # Isolation: each branch equals a plain greedy decode of shared prefix + <|branch|>Title: alone.
    context = eng.prompt_ids(expansion_messages(QUESTION, titles)) + forced
    bodies = []
    for b, title in enumerate(titles):
        prefix = branch_prefix_ids(tok, ctrl, title)
        fed = [t for t, _p, gr, br in g.slots if gr == 0 and br == b]
        assert fed[: len(prefix)] == prefix and fed[-1] == ctrl.branch_end
        body = fed[len(prefix):-1]  # the last fed token is the cap's (or end of turn's) <|/branch|>
        bodies.append(body)
        if body:
            cfg = GenerationConfig(do_sample=False, max_new_tokens=len(body), min_new_tokens=len(body),
                                   eos_token_id=None, pad_token_id=0)
            with torch.no_grad():
                out = model.generate(torch.tensor([context + prefix]), generation_config=cfg)
            assert out[0, len(context) + len(prefix):].tolist() == body, b
        assert g.doc.groups[0].branches[b].text == tok.decode(body, skip_special_tokens=False).strip()
    assert sum(map(len, bodies)) >= 10  # the comparison really covered decoded tokens

    # The answer text and the stats of both stages.
    assert g.text == assemble(titles, [b.text for b in g.doc.groups[0].branches])
    assert g.text.startswith("1. Eat a balanced diet:")
    branch_tokens = sum(len(x) + 1 for x in bodies)  # bodies and their <|/branch|>
    assert g.stats.parallel_tokens == branch_tokens == direct.stats.parallel_tokens
    assert g.stats.tokens == len(skel) + branch_tokens <= lim.max_new_tokens
    assert g.stats.forwards == len(skel) + direct.stats.forwards  # prefill, then every forced id but the eot
    assert 0 < g.stats.dp <= 1 and g.stats.abn == 3
    assert 0 < dp(g.doc) < 1 and ppd([g.doc]) == 1 and abn([g.doc]) == 3  # markup metrics: titles are serial
    assert g.stats.visible_tokens == len(text_ids(tok, g.text))
    assert 0 < g.stats.parallel_seconds <= g.stats.seconds
    assert g.stats.prefill_tokens == len(eng.prompt_ids(skeleton_messages(QUESTION))) + len(
        eng.prompt_ids(expansion_messages(QUESTION, titles)))
    assert "[skeleton]" in g.raw and "2. **Sleep** well" in g.raw and "<|para|>" in g.raw
    render(g.doc)


def test_sot_explicit_skeleton_skips_stage_one_and_caps_points(tiny):
    model, tok, ctrl = tiny
    eng = HybridEngine(model, tok)
    events = []
    g = generate_sot(eng, "Give tips.", limits=Limits(max_new_tokens=100, max_branches=2, max_branch_tokens=8),
                     skeleton=["Diet", "diet", "Sleep", "Work"], on_event=events.append)
    assert [b.title for b in g.doc.groups[0].branches] == ["Diet", "Sleep"]
    assert g.stats.tokens == g.stats.parallel_tokens and g.stats.dp == 1.0
    assert g.stats.prefill_tokens == len(eng.prompt_ids(expansion_messages("Give tips.", ["Diet", "Sleep"])))
    kinds = [e.kind for e in events]
    assert kinds.count("open") == 1 and kinds.count("close") == 1 and kinds[-1] == "done"


def test_sot_shares_the_token_budget(tiny):
    model, tok, _ = tiny
    eng = HybridEngine(model, tok)
    skel = forced_skeleton(tok, "1. Diet\n2. Sleep\n3. Work")
    lim = Limits(max_new_tokens=len(skel) * 4 + 5, max_branch_tokens=50)  # the skeleton fits its quarter
    g = generate_sot(eng, "Give tips.", limits=lim, skeleton_prefix=skel)
    assert g.stats.groups == 1 and g.finish_reason == "length"
    # The branches run out of budget together; the engine closes each with one <|/branch|> token.
    remaining = lim.max_new_tokens - len(skel)
    assert remaining - 3 <= g.stats.parallel_tokens <= remaining
    assert g.stats.tokens == len(skel) + g.stats.parallel_tokens <= lim.max_new_tokens


@pytest.mark.parametrize("how", ["one point", "prose", "duplicates"])
def test_sot_falls_back_to_a_serial_answer(tiny, how):
    model, tok, _ = tiny
    eng = HybridEngine(model, tok)
    lim = Limits(max_new_tokens=120)  # the skeleton gets 30: every forced one below ends on its own
    if how == "duplicates":
        skel: list[int] = []
        g = generate_sot(eng, QUESTION, limits=lim, skeleton=["Diet", " DIET. "])
    else:
        text = "1. Just one idea" if how == "one point" else "Health is a long story that no list can tell."
        skel = forced_skeleton(tok, text)
        g = generate_sot(eng, QUESTION, limits=lim, skeleton_prefix=skel)
    serial = eng.generate(QUESTION, mode="serial", limits=Limits(max_new_tokens=120 - len(skel)))
    assert g.answer_ids == serial.answer_ids and g.text == serial.text
    assert g.stats.groups == 0 and g.stats.parallel_tokens == 0 and g.stats.dp == 0.0
    assert g.stats.tokens == len(skel) + serial.stats.tokens
    assert all(isinstance(s, Serial) for s in g.doc.segments) and not any(isinstance(s, Group)
                                                                         for s in g.doc.segments)
    assert "[serial]" in g.raw


def test_sot_fits_the_branches_into_the_context(tiny):
    model, tok, ctrl = tiny
    eng = HybridEngine(model, tok)
    points = ["Diet", "Sleep", "Work"]
    forced = sum(([ctrl.title, *text_ids(tok, p), ctrl.title_end] for p in points), []) + [ctrl.para, 0]
    need = len(eng.prompt_ids(expansion_messages("Give tips.", points))) + len(forced) + 2
    eng.context = need + 3 * 10  # room for three branches of 10 tokens, not of 24
    g = generate_sot(eng, "Give tips.", limits=Limits(max_new_tokens=200, max_branch_tokens=24),
                     skeleton=points, record=True)
    assert g.stats.branches == [3] and max(p for _, p, _, _ in g.slots) < eng.context
    for b in range(3):
        assert sum(1 for s in g.slots if s[2] == 0 and s[3] == b) == 10
    eng.context = need + 3 * 7  # too little for any useful paragraph: a serial answer instead
    g = generate_sot(eng, "Give tips.", limits=Limits(max_new_tokens=200), skeleton=points)
    assert g.stats.groups == 0 and g.finish_reason == "length" and "[serial]" in g.raw


def test_sot_on_a_plain_model_reads_the_control_tokens_as_line_breaks(tiny):
    """An untrained model sees `\\n` where the control tokens stand, and gets its own rows back afterwards."""
    model, tok, ctrl = tiny
    eng = HybridEngine(model, tok)
    eng.is_aspd_model = False  # as from_pretrained marks a plain model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    titles = ["Diet", "Sleep"]
    g = generate_sot(eng, "Give tips.", skeleton=titles, limits=Limits(max_new_tokens=80, max_branch_tokens=12),
                     record=True)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert g.stats.groups == 1

    newline, controls, first = text_ids(tok, "\n")[-1], set(ctrl.all()), min(ctrl.all())
    forced = [t for p in titles for t in (ctrl.title, *text_ids(tok, p), ctrl.title_end)] + [ctrl.para]
    context = eng.prompt_ids(expansion_messages("Give tips.", titles)) + forced
    for b, title in enumerate(titles):
        prefix = branch_prefix_ids(tok, ctrl, title)
        at = [i for i, (_t, _p, gr, br) in enumerate(g.slots) if gr == 0 and br == b][len(prefix) - 1]
        got = g.logits[at][:first]  # the first body token's logits (columns of the tokens the model knew)
        with torch.no_grad():
            as_newlines = model(torch.tensor([[newline if t in controls else t for t in context + prefix]]))
            as_is = model(torch.tensor([context + prefix]))
        assert (got - as_newlines.logits[0, -1, :first]).abs().max() < 1e-4, b
        assert (got - as_is.logits[0, -1, :first]).abs().max() > 1e-3, b  # the borrowed rows did change it
