"""Rule-based rewriter and likelihood independence judge (DESIGN.md section 5)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aspd.attention import forward_layout
from aspd.layout import Kind, build_layout
from aspd.markup import Branch, Document, Group, Serial, flatten, is_head, parse, same_text
from aspd.pipeline.likelihood import LikelihoodJudge, branch_dependence, pooled
from aspd.pipeline.rules import (
    RuleRewriter,
    find_runs,
    head_number,
    keyphrases,
    marker_problems,
    split_head,
    title_from,
)
from aspd.pipeline.types import Candidate, Sample
from aspd.sample import chat_spans
from aspd.testing import tiny_model, tiny_tokenizer
from aspd.tokens import add_control_tokens

# ---------------------------------------------------------------------------------------------- helpers


def rewrite(answer: str, n: int = 4, min_words: int = 0) -> list[Candidate]:
    rw = RuleRewriter(min_words=min_words)
    out = asyncio.run(rw.rewrite(Sample("s", [{"role": "user", "content": "q"}], answer, {}), n))
    for c in out:
        if c.markup is not None:
            doc = parse(c.markup)
            assert c.has_parallel and same_text(flatten(doc), answer), c.markup
            assert all(marker_problems(g) == [] for g in doc.groups), c.markup
    return out


def groups_of(c: Candidate) -> list[list[tuple[str, str]]]:
    assert c.markup is not None
    return [[(b.title, b.text) for b in g.branches] for g in parse(c.markup).groups]


def by_source(cands: list[Candidate]) -> dict[str, Candidate]:
    return {c.source: c for c in cands}


# ---------------------------------------------------------------------------------------------- heads


@pytest.mark.parametrize(("text", "head"), [
    ("1. **Diet**: Eat more", "1. **Diet**:"),
    ("- Walk daily to stay fit.", "- Walk daily"),
    ("## Sleep\n\nText", "## Sleep"),
    ("**Sleep**\nText", "**Sleep**"),
    ("Cost: text", "Cost:"),
    ("2. Exercise regularly. At least 30 minutes.", "2. Exercise regularly."),
    ("- Eat a balanced diet rich in fruit and vegetables", "- Eat a balanced diet"),
    ("- Use the (optional) flag now", "- Use"),
    ("2. Sleep - Get eight hours.", "2. Sleep -"),  # a body starting " - Get" would read as a bullet
    ("1. **Montgomery Zoo** - Home to 500 animals.", "1. **Montgomery Zoo** -"),  # likewise after a bold lead
    ("1. Setup\n   - a\n   - b", "1. Setup"),  # a short first line with more below: the whole line
    ("3. **Use [pandas](https://x.org)** for loading", "3. **Use [pandas](https://x.org)**"),
    ('3. "The End of the Line" by the band', '3. "The End of the Line"'),  # never inside quotes or code
    ("- Run `pip install x` first", "- Run `pip install x`"),
    ("- fast", None),  # no body would be left
    ("Just prose, no marker.", None),
])
def test_split_head(text: str, head: str | None) -> None:
    assert split_head(text) == head
    if head is not None:
        assert is_head(head) and "\n" not in head and text.startswith(head)
        assert not re.match(r"[ \t]*(\d+[.)]|[-*+•])\s", text[len(head) :])  # the body never starts with a marker


def test_marker_problems() -> None:
    ok = Group((Branch("1. **A**:", " x"), Branch("2. **B**:", " y"), Branch("## C", "\n- own list")))
    assert marker_problems(ok) == ["some heads are numbered and others are not"]
    assert marker_problems(Group((Branch("1. A", " x"), Branch("2. B", " y")))) == []
    assert marker_problems(Group((Branch("2. A", " x"), Branch("2. B", " y")))) == [
        "numbered heads are not consecutive: [2, 2]"]
    assert marker_problems(Group((Branch("A", "1. x"), Branch("B", "\n\n* y")))) == [
        "branch 1 ('A') starts with the list marker '1.'", "branch 2 ('B') starts with the list marker '*'"]
    # Below its head, on a new line, a list belongs to the head's section; on the head's line it does not.
    assert marker_problems(Group((Branch("Pros:", "\n- a"), Branch("Cons:", " - b")))) == [
        "branch 2 ('Cons:') starts with the list marker '-'"]
    assert head_number("## 3. Diet") == 3 and head_number("**4. Sleep**") == 4 and head_number("Diet") is None


# ---------------------------------------------------------------------------------------------- rules

NUMBERED = """Here are three tips:

1. **Eat well**: Focus on vegetables.
2. Exercise regularly. At least 30 minutes.
3) Sleep: 8 hours a night.

In summary, habits matter."""


def test_numbered_list_gets_heads_and_exact_text() -> None:
    (c,) = rewrite(NUMBERED)
    assert c.source == "rules:outer"
    assert groups_of(c) == [[
        ("1. **Eat well**:", " Focus on vegetables."),
        ("2. Exercise regularly.", " At least 30 minutes."),
        ("3) Sleep:", " 8 hours a night."),
    ]]
    assert flatten(parse(c.markup or "")) == NUMBERED  # tags on their own lines: exact, not only same_text
    doc = parse(c.markup or "")
    assert doc.segments[0] == parse("Here are three tips:\n").segments[0]


def test_pros_and_cons_blocks() -> None:
    answer = "Pros:\n- fast to build\n- cheap to run\n\nCons:\n* slow at scale\n* ugly output\n• heavy install\n"
    cands = by_source(rewrite(answer))
    assert set(cands) == {"rules:outer", "rules:inner"}  # longest equals outer, lists equals inner
    assert groups_of(cands["rules:outer"]) == [[
        ("Pros:", "\n- fast to build\n- cheap to run"), ("Cons:", "\n* slow at scale\n* ugly output\n• heavy install")]]
    assert groups_of(cands["rules:inner"]) == [
        [("- fast", " to build"), ("- cheap", " to run")],
        [("* slow", " at scale"), ("* ugly", " output"), ("• heavy", " install")],
    ]
    # "Output:" / "Here is the code:" lines around code are no pros/cons: what follows them is dependent.
    code = "Here is the code:\n```python\nprint(1)\n```\nOutput:\n```\n1\n```\n"
    assert rewrite(code)[0].has_parallel is False


HEADED = """# Guide
Intro text.

## Diet
Eat well.

- fresh fruit
- green veg

## Exercise
Move every day.

## Conclusion
Done."""


def test_headed_sections_outer_and_lists_inner() -> None:
    cands = by_source(rewrite(HEADED))
    assert groups_of(cands["rules:outer"]) == [[
        ("## Diet", "\nEat well.\n\n- fresh fruit\n- green veg"),
        ("## Exercise", "\nMove every day."),
    ]]
    # The closing section and the title stay serial.
    serial = [s.text for s in parse(cands["rules:outer"].markup or "").segments if not isinstance(s, Group)]
    assert serial == ["# Guide\nIntro text.\n", "\n## Conclusion\nDone."]
    assert groups_of(cands["rules:inner"]) == [[("- fresh", " fruit"), ("- green", " veg")]]


def test_bold_title_paragraphs_the_teacher_shape() -> None:
    answer = ("Good sleep rests on a few habits.\n\n**Regular schedule**\nGoing to bed at the same time trains the "
              "body clock.\n\n**Dark, cool room**\nA bedroom at about 18 degrees with no light helps.\n\n"
              "**No screens:**\nPhones keep the brain awake.\n\nOverall, it depends.")
    (c,) = rewrite(answer)
    assert groups_of(c) == [[("**Regular schedule**", "\nGoing to bed at the same time trains the body clock."),
                             ("**Dark, cool room**", "\nA bedroom at about 18 degrees with no light helps."),
                             ("**No screens:**", "\nPhones keep the brain awake.")]]
    assert parse(c.markup or "").segments[-1] == Serial("\nOverall, it depends.")
    # The same with the title on the paragraph's line: labelled paragraphs.
    inline = answer.replace("**\nGoing", "**: Going").replace("room**\nA", "room**: A").replace(":**\nPhones", ":** Phones")
    (c,) = rewrite(inline)
    assert [t for t, _ in groups_of(c)[0]] == ["**Regular schedule**:", "**Dark, cool room**:", "**No screens:**"]


def test_labelled_paragraphs() -> None:
    answer = (
        "Consider these options.\n\nOption A: cheap but slow.\n\n**Option B**: fast but pricey.\n"
        "Also loud.\n\nOption C: balanced.\n\nChoose wisely. It matters."
    )
    (c,) = rewrite(answer)
    assert groups_of(c) == [[
        ("Option A:", " cheap but slow."),
        ("**Option B**:", " fast but pricey.\nAlso loud."),
        ("Option C:", " balanced."),
    ]]


def test_labelled_paragraphs_whose_body_names_its_label_and_a_closing_label() -> None:
    """After a label, "This ..." names the label itself, not the item before (the teacher's usual shape); a
    closing "**Conclusion**:" sums up the others and stays serial after the group."""
    answer = ("Astronomers find exoplanets in several ways:\n\n**1. Radial Velocity**: This method tracks the wobble "
              "of a star.\n\n**2. Transit**: This method watches the star dim.\n\n**3. Direct Imaging**: It takes "
              "pictures of the planet.\n\n**Conclusion**: Each method sees other planets.")
    (c,) = rewrite(answer)
    assert [t for t, _ in groups_of(c)[0]] == ["**1. Radial Velocity**:", "**2. Transit**:", "**3. Direct Imaging**:"]
    assert parse(c.markup or "").segments[-1] == Serial("\n**Conclusion**: Each method sees other planets.")
    numbered = answer.replace("**Conclusion**", "**4. Conclusion**")
    (c,) = rewrite(numbered)
    assert len(groups_of(c)[0]) == 3  # a numbered closing label ends the run too
    # Order words after a label still refer back.
    assert find_runs("**1. Design**: Draw the schema.\n\n**2. Build**: Then write the code.") == []


def test_adjacent_bold_label_lines() -> None:
    """The teacher's other usual shape: one line per aspect, no blank line between them, under an intro line
    and above a closing line of the same paragraph. Each line is a branch; the closing line stays serial."""
    answer = ("Urban wildlife poses risks to people and pets. Common dangers include:\n"
              "**Disease transmission**: Some species carry rabies.\n"
              "**Predation:** Foxes can prey on small pets.\n"
              "**Traffic collisions**: Deer collide with cars.\n"
              "Knowing these dangers helps people stay safe.")
    (c,) = rewrite(answer)
    assert groups_of(c) == [[("**Disease transmission**:", " Some species carry rabies."),
                             ("**Predation:**", " Foxes can prey on small pets."),
                             ("**Traffic collisions**:", " Deer collide with cars.")]]
    assert flatten(parse(c.markup or "")) == answer
    assert parse(c.markup or "").segments[-1] == Serial("Knowing these dangers helps people stay safe.")
    # A bold name with a dash after it is a label too; the dash goes with the head.
    dashed = "Courses to try:\n**1. Photography** - Learn the camera.\n**2. Mapping** - Read the land.\n"
    assert [[it.title for it in r.items] for r in find_runs(dashed)] == [["**1. Photography** -", "**2. Mapping** -"]]
    # Repeated pairs whose second line answers the first: the pairs may be branches, their lines never.
    pairs = "**Myth:** Cold causes flu.\n**Fact:** Viruses do.\n\n**Myth:** Bats are blind.\n**Fact:** They see."
    assert [[pairs[it.start : it.end] for it in r.items] for r in find_runs(pairs)] == [pairs.split("\n\n")]
    # Lines that answer or use each other stay serial: repeated pairs, a dialogue, a calculation from the items
    # above, an item that introduces what follows it, order words; so do plain labels and anything in code.
    serial = [
        "**Myth:** Cold causes flu.\n**Fact:** Viruses do.\n**Myth:** Bats are blind.\n**Fact:** They see.",
        "**Alice:** Hi there.\n**Bob:** Hello Alice.\n**Alice:** How are you?",
        "**Length:** 6 feet\n**Width:** 4 feet\n**Perimeter:** 2 * (length + width) = 20 feet",
        "**Warm-up:** Stretch for five minutes.\n**Race plan:** Split it into three parts:\n- fast\n- slow",
        "**Breakfast:** Read at 8 AM.\n**Lunch:** Continue reading until 2 PM.\n**Dinner:** Stop at 6 PM.",
        "Price: A road bike costs more.\nDurability: A mountain bike lasts longer.",
        "**Code:** `pip install x` first.\n**Output:** It prints 1.",
        "```md\n**Disease transmission**: Some species carry rabies.\n**Predation:** Foxes prey on pets.\n```",
    ]
    for text in serial:
        assert find_runs(text) == [], text


def test_order_words_after_a_colon_inside_bold_refer_back() -> None:
    """"**Build:** Then ..." is a step like "**Build**: Then ..." (the marker-like "* " before "Then" is no list
    marker to drop)."""
    assert find_runs("**1. Design:** Draw the schema.\n\n**2. Build:** Then write the code.") == []
    assert find_runs("**Design:** Draw the schema.\n\n**Build:** Once it is drawn, write code.") == []
    assert [len(r.items) for r in find_runs("**Design:** Draw the schema.\n\n**Budget:** Plan the cost.")] == [2]


def test_code_fences_are_never_split_or_searched() -> None:
    code = "```bash\npip install x\n2. not an item\n- nor this\n# nor a heading\n```"
    answer = f"Steps:\n\n1. Install:\n{code}\n2. Run it:\n\n    x --go\n\nDone."
    (c,) = rewrite(answer)
    assert groups_of(c) == [[("1. Install:", f"\n{code}"), ("2. Run it:", "\n\n    x --go")]]
    # A fence alone never yields a group, whatever it holds.
    assert rewrite(f"Look:\n\n{code}\n\n~~~\n- a\n- b\n~~~")[0].has_parallel is False


def test_nested_lists_stay_in_their_parent_item() -> None:
    answer = "1. Setup\n   - a\n   - b\n2. Use\n   1. one\n   2. two\n\n   More about use.\n"
    cands = rewrite(answer)
    assert len(cands) == 1
    assert groups_of(cands[0]) == [[
        ("1. Setup", "\n   - a\n   - b"),
        ("2. Use", "\n   1. one\n   2. two\n\n   More about use."),
    ]]


def test_unindented_paragraphs_of_numbered_items() -> None:
    # LLM style: the paragraphs of an item are not indented; numbering resuming says they belong to it.
    answer = "1. **First**\n\nWhy it matters.\n\n- sub a\n- sub b\n\n2. **Second**\n\nMore.\n\nIn short, do both."
    (c,) = rewrite(answer)
    assert groups_of(c) == [[
        ("1. **First**", "\n\nWhy it matters.\n\n- sub a\n- sub b"),
        ("2. **Second**", "\n\nMore."),
    ]]
    # A new list starting over at 1 is a new run; "1. 1. 1." (Markdown auto-numbering) would number its heads
    # wrongly and stays serial.
    runs = find_runs("1. ab cd\n2. ef gh\n\nThen:\n\n1. ij kl\n2. mn op\n\n1. qr st\n1. uv wx\n1. yz ab")
    assert [[it.title for it in r.items] for r in runs] == [["1. ab", "2. ef"], ["1. ij", "2. mn"]]


def test_sequential_steps_stay_serial() -> None:
    steps = "1. Download the installer.\n2. Then run it as admin.\n3. Reboot when it asks."
    assert find_runs(steps) == []
    ref = "1. **Create** a file named app.py.\n2. **Edit** the file from step 1 and add a route.\n"
    assert find_runs(ref) == []
    once = "1. **Design**: Draw the schema.\n2. **Build**: Once the schema is drawn, write the code.\n"
    assert find_runs(once) == []
    free = "1. **Design**: Draw the schema.\n2. **Budget**: Plan the cost of the servers.\n"
    assert [len(r.items) for r in find_runs(free)] == [2]


PROSE = """Learning a language as an adult is very possible with the right habits.

Daily listening trains the ear before anything else. Podcasts, radio and films in the language, even when \
only half of it is understood, build a feel for rhythm and sound that grammar books cannot give.

Speaking with natives from the first weeks removes the fear of mistakes. A weekly conversation exchange, \
online or in a cafe, turns vocabulary from the page into words that come out when they are needed.

Spaced repetition flashcards keep new words from fading. Ten minutes a day with an app that shows each card \
just before it would be forgotten adds up to thousands of words within a year.

In short, steady small habits beat rare long sessions."""


def test_prose_paragraphs_get_keyphrase_labels() -> None:
    (c,) = rewrite(PROSE)
    (group,) = groups_of(c)
    assert len(group) == 3
    for title, body in group:
        assert not is_head(title) and 1 <= len(title.split()) <= 3
        # A real label, never the clipped start the body repeats.
        assert not body.lower().startswith(title.lower())
    assert len({t.lower() for t, _ in group}) == 3
    # The intro and the conclusion stay serial.
    doc = parse(c.markup or "")
    assert isinstance(doc.segments[0], Serial) and isinstance(doc.segments[-1], Serial)
    # A paragraph that refers back ("This ...", "However, ...", "Additionally, ...") is no branch.
    linked = PROSE.replace("Speaking with natives", "This also means speaking with natives")
    assert [len(r.items) for r in find_runs(linked)] == []
    assert keyphrases("Regular exercise strengthens the heart and the lungs.")[0] != "Regular exercise"


def test_short_answers_stay_serial() -> None:
    (c,) = rewrite(NUMBERED, min_words=100)
    assert c.has_parallel is False and "under 100 words" in c.raw
    assert rewrite(NUMBERED * 6, min_words=100)[0].has_parallel


def test_no_structure_gives_one_negative_candidate() -> None:
    (c,) = rewrite("Just a plain answer with no structure.\n\nIt has: two paragraphs. Really.")
    assert c.has_parallel is False and c.markup is None and c.source == "rules"
    assert rewrite("- only one item\n\nText.")[0].has_parallel is False
    assert rewrite("- fast\n- cheap\n- good")[0].has_parallel is False  # one-word items: no head fits
    assert rewrite("") == [Candidate(c.raw, False, None, "rules")]
    assert asyncio.run(RuleRewriter().rewrite(Sample("s", [], NUMBERED, {}), 0)) == []


def test_heads_are_made_unique_or_the_run_stays_serial() -> None:
    (c,) = rewrite("- Example: one thing\n- Example: two things\n- example: three things\n")
    assert [t for t, _ in groups_of(c)[0]] == ["- Example: one", "- Example: two", "- example: three"]
    assert find_runs("- Same words here\n- Same words here\n") == []  # identical items: no unique heads
    assert title_from("3. **Use [pandas](https://x.org)** for `data` loading") == "Use pandas"
    assert title_from("## 2. Set up the <env>") == "Set up the env"


def test_answer_with_markup_tags_is_marked_up_with_escapes() -> None:
    # Text that reads as a tag is escaped by render (&lt;branchgroup>) and read back by parse, so such an answer
    # is marked up like any other (rewrite() checks that its markup flattens back to the answer).
    answer = '1. Write <branchgroup> here\n2. and <branch title="x"> there'
    c = rewrite(answer)[0]
    assert c.has_parallel and c.markup is not None and "&lt;branchgroup" in c.markup
    ok = rewrite("1. Run `git checkout <branch>` first\n2. Push with `git push` later")  # only real tags are escaped
    assert groups_of(ok[0]) == [[("1. Run `git checkout <branch>`", " first"), ("2. Push with `git push`", " later")]]


def test_strategies_limit_and_determinism() -> None:
    answer = HEADED + "\n\nNotes:\n\n1. one a\n2. two b\n3. three c"
    a, b = rewrite(answer, 4), rewrite(answer, 4)
    assert a == b and len({c.markup for c in a}) == len(a)
    assert [c.source for c in rewrite(answer, 2)] == [c.source for c in a[:2]]
    with pytest.raises(ValueError):
        RuleRewriter(["nope"])


# A random list-like answer: intro, lists (maybe nested, maybe with code), headings, labels, prose.
_word = st.text(alphabet="abcdefgh XYZ:*_#-.<>&\"'`", min_size=1, max_size=12)
_line = st.lists(_word, min_size=1, max_size=6).map(" ".join)


@st.composite
def _answers(draw: st.DrawFn) -> str:
    parts: list[str] = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["numbered", "bullets", "heading", "label", "prose", "code"]))
        sep = draw(st.sampled_from(["\n", "\n\n"]))
        indent = draw(st.sampled_from(["", "  ", "\t"]))
        if kind in ("numbered", "bullets"):
            items = []
            for i in range(draw(st.integers(1, 4))):
                marker = f"{i + 1}{draw(st.sampled_from('.)'))}" if kind == "numbered" else draw(st.sampled_from("-*•+"))
                item = f"{indent}{marker} {draw(_line)}"
                if draw(st.booleans()):
                    item += f"\n{indent}   - {draw(_line)}"
                if draw(st.booleans()):
                    item += f"\n{draw(_line)}"
                items.append(item)
            parts.append(sep.join(items))
        elif kind == "heading":
            parts.append(f"{draw(st.sampled_from(['#', '##', '**']))} {draw(_line)}\n{draw(_line)}")
        elif kind == "label":
            parts.append(f"{draw(st.sampled_from(['Step', 'Note', '**Tip**', 'A b', 'Pros']))}: {draw(_line)}")
        elif kind == "code":
            parts.append(f"```\n1. {draw(_line)}\n- {draw(_line)}\n```")
        else:
            parts.append(" ".join(draw(_line) for _ in range(draw(st.integers(1, 8)))))
    return draw(st.sampled_from(["\n", "\n\n", "\r\n"])).join(parts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_answers())
def test_any_markup_parses_and_flattens_back(answer: str) -> None:
    rw = RuleRewriter(min_words=0)
    cands = rw.candidates(answer, 4)
    assert cands and all(c.source.startswith("rules") for c in cands)
    for c in cands:
        if c.markup is None:
            assert c.has_parallel is False and len(cands) == 1
            continue
        doc = parse(c.markup)
        assert doc.groups and same_text(flatten(doc), answer)
        for g in doc.groups:
            titles = [b.title for b in g.branches]
            assert len(titles) >= 2 and all(titles) and len({t.lower() for t in titles}) == len(titles)
            assert all("\n" not in t for t in titles)
            assert all(b.text.strip() for b in g.branches)
            assert marker_problems(g) == []
            for b in g.branches:  # a head's body never repeats it; a label is never the body's clipped start
                assert not (b.text.lstrip(" \t") if is_head(b.title) else b.text.lstrip()).startswith(b.title)
    assert rw.candidates(answer, 4) == cands


# ---------------------------------------------------------------------------------------------- likelihood

MESSAGES = [{"role": "user", "content": "Give me three tips for staying healthy."}]
TIPS = Group((
    Branch("Diet", "1. Eat a balanced diet."),
    Branch("Exercise", "2. Exercise regularly."),
    Branch("Sleep", "3. Sleep well."),
))


@pytest.fixture(scope="module")
def tiny() -> tuple[object, object, object]:
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok) + 6)
    return model, tok, add_control_tokens(tok, model)


def _reference(model: object, tok: object, ctrl: object, before: str, group: Group) -> list[tuple[float, float]]:
    """(changed, nll_increase) per branch over all body tokens, from two plain `forward_layout` calls."""
    layouts = []
    for mode in ("shared", "indep"):
        spans = chat_spans(tok, ctrl, MESSAGES, Document((Serial(before), group)), add_eot=False)
        lay = build_layout(spans, mask_mode=mode)
        layouts.append(dataclasses.replace(lay, position_ids=torch.arange(len(lay))))
    with torch.no_grad():
        la, lb = (forward_layout(model, lay)[:-1] for lay in layouts)
    tgt, lay = layouts[0].input_ids[1:], layouts[0]
    nll = [torch.nn.functional.cross_entropy(x, tgt, reduction="none") for x in (la, lb)]
    out = []
    for b in range(len(group.branches)):
        sel = (lay.kinds[1:] == int(Kind.BODY)) & (lay.branch[1:] == b)
        changed = (la.argmax(-1)[sel] != lb.argmax(-1)[sel]).float().mean()
        out.append((float(changed), float((nll[1][sel] - nll[0][sel]).mean())))
    return out


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_branch_dependence_matches_two_plain_forwards(arch: str) -> None:
    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok) + 6)
    ctrl = add_control_tokens(tok, model)
    figs = branch_dependence(model, tok, ctrl, MESSAGES, "Here are three tips:", TIPS, content_only=False)
    ref = _reference(model, tok, ctrl, "Here are three tips:", TIPS)
    for f, (changed, increase) in zip(figs, ref, strict=True):
        assert f["tokens"] == f["body_tokens"] > 0
        assert f["changed"] == pytest.approx(changed) and f["nll_increase"] == pytest.approx(increase, abs=1e-4)


HEADS = Group((
    Branch("1. **Diet**:", " Eat a balanced diet."),
    Branch("2. **Exercise**:", " Move every day."),
    Branch("3. **Sleep**:", " Sleep well."),
))


def test_branch_dependence_with_head_titles(tiny: tuple) -> None:
    """With heads the head is part of the engine-fed prefix: only the body after it is scored, under the same
    two masks as any group (equal to two plain forwards)."""
    from aspd.sample import body_ids

    model, tok, ctrl = tiny
    figs = branch_dependence(model, tok, ctrl, MESSAGES, "Here are three tips:", HEADS, content_only=False)
    ref = _reference(model, tok, ctrl, "Here are three tips:", HEADS)
    for f, br, (changed, increase) in zip(figs, HEADS.branches, ref, strict=True):
        assert f["title"] == br.title and f["body_tokens"] == f["tokens"] == len(body_ids(tok, br))
        assert f["changed"] == pytest.approx(changed) and f["nll_increase"] == pytest.approx(increase, abs=1e-4)
    spans = chat_spans(tok, ctrl, MESSAGES, Document((Serial("Here are three tips:"), HEADS)), add_eot=False)
    prefixes = [tok.decode(sp.ids[1:]) for sp in spans if sp.kind == Kind.PREFIX]
    assert prefixes == ["1. **Diet**:", "2. **Exercise**:", "3. **Sleep**:"]  # no "Label:" separator for heads


def test_branch_dependence_figures_on_a_tiny_model(tiny: tuple) -> None:
    model, tok, ctrl = tiny
    figs = branch_dependence(model, tok, ctrl, MESSAGES, "Here are three tips:", TIPS)
    assert [f["title"] for f in figs] == ["Diet", "Exercise", "Sleep"]
    for f in figs:
        assert 0 < f["tokens"] < f["body_tokens"]  # content only: "1", ".", " " are not scored
        assert 0.0 <= f["changed"] <= 1.0
        assert all(math.isfinite(f[k]) for k in ("nll_shared", "nll_indep", "nll_increase"))
        assert f["nll_increase"] == pytest.approx(f["nll_indep"] - f["nll_shared"])
    # Branch 0 sees no sibling under either mask and keeps its positions: identical by construction.
    assert figs[0]["changed"] == 0.0 and figs[0]["nll_increase"] == 0.0
    assert any(f["changed"] > 0 for f in figs[1:])  # a random model does react to hidden siblings
    assert branch_dependence(model, tok, ctrl, MESSAGES, "Here are three tips:", TIPS) == figs
    p = pooled(figs)
    assert p["tokens"] == figs[1]["tokens"] + figs[2]["tokens"]
    assert min(f["changed"] for f in figs[1:]) <= p["changed"] <= max(f["changed"] for f in figs[1:])
    assert pooled(figs[:1]) == {"tokens": 0, "changed": 0.0, "nll_increase": 0.0}


def test_likelihood_judge_votes(tiny: tuple) -> None:
    model, tok, _ = tiny
    sample = Sample("s", MESSAGES, "", {})
    lax = LikelihoodJudge(model, tokenizer=tok, max_changed=1.0, max_nll_increase=math.inf)
    strict = LikelihoodJudge(model, tokenizer=tok, max_changed=0.0, max_nll_increase=-1.0)
    votes = asyncio.run(lax.independence(sample, "Here are three tips:", TIPS, 3))
    assert len(votes) == 3 and all(v == votes[0] for v in votes) and votes[0].verdict is True
    assert "change their greedy prediction" in votes[0].reason and "'Sleep'" in votes[0].reason
    (no,) = asyncio.run(strict.independence(sample, "Here are three tips:", TIPS, 1))
    assert no.verdict is False and no.reason.startswith("dependent")
    assert asyncio.run(lax.independence(sample, "", TIPS, 2))[0].verdict is True  # nothing before: fine too
    fig = dict(branch=1, title="B", body_tokens=3, tokens=3, changed=0.0, nll_shared=1.0, nll_indep=1.0)
    assert strict.verdict([dict(fig, tokens=0, nll_increase=0.0)]).verdict is True  # nothing to score
    assert lax.verdict([dict(fig, nll_increase=math.nan)]).verdict is None
    with pytest.raises(NotImplementedError):
        asyncio.run(lax.integrity(sample, parse("x"), 3))
    with pytest.raises(NotImplementedError):
        asyncio.run(lax.answer(sample, parse("x"), 3))
    with pytest.raises(ValueError):
        LikelihoodJudge(model)


@pytest.mark.slow
def test_repeated_sibling_shows_more_dependence_on_smollm2() -> None:
    from aspd.models.fetch import fetch

    judge = LikelihoodJudge(fetch("smollm2-135m", progress=False), device="cpu", dtype="float32")
    sample = Sample("s", [{"role": "user", "content": "Name two unrelated facts."}], "", {})
    fact = "The violinist Okonkwo tuned her zither beside the quartz aqueduct in Vilnius at dawn."
    unrelated = Group((Branch("Music", fact), Branch("Space", "Jupiter is the largest planet in our solar system.")))
    repeated = Group((Branch("Music", fact), Branch("Again", fact)))
    free = pooled(judge.figures(sample, "Here are two facts:", unrelated))
    copy = pooled(judge.figures(sample, "Here are two facts:", repeated))
    # Seeing the sibling makes the copy far easier; hiding it costs much more than for an unrelated branch.
    assert copy["nll_increase"] > free["nll_increase"] + 1.0 and copy["changed"] > free["changed"]
    (vote,) = asyncio.run(judge.independence(sample, "Here are two facts:", repeated, 1))
    assert vote.verdict is False


def test_a_closing_line_right_under_the_last_item_stays_serial() -> None:
    answer = ("To get insured, follow these steps:\n\n1. Compare offers from several insurers online today.\n"
              "2. Choose the plan that covers collisions and theft.\n3. Pay the first premium to start coverage.\n"
              "By following these steps, you can get insured quickly.")
    runs = find_runs(answer)
    assert runs and answer[runs[0].items[-1].start : runs[0].end] == "3. Pay the first premium to start coverage."
