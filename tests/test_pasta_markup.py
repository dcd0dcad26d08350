"""PASTA markup: parse/render round trip, errors with line:column, ASPD conversion and the list annotator."""

import pickle

import pytest

from aspd.markup import MarkupError, flatten
from aspd.markup import parse as parse_aspd
from aspd.pasta.markup import (
    PastaDoc,
    PastaError,
    Promise,
    Scope,
    Text,
    annotate_lists,
    from_aspd,
    has_tags,
    main_text,
    parse,
    promises,
    render,
    strip,
)

PAPER = (
    "Here are some ways:\n<scope>\n1. Eye Strain:<promise/><async> Screens tire the eyes.</async>\n"
    "2. Poor Posture:<promise/><async> Hunching hurts.</async>\n</scope>\nFind a balance."
)


def test_parse_tree_and_exact_round_trip():
    doc = parse(PAPER)
    assert doc == PastaDoc((
        Text("Here are some ways:\n"),
        Scope((Text("\n1. Eye Strain:"), Promise((Text(" Screens tire the eyes."),)),
               Text("\n2. Poor Posture:"), Promise((Text(" Hunching hurts."),)), Text("\n"))),
        Text("\nFind a balance."),
    ))
    assert render(doc) == PAPER
    assert strip(doc) == ("Here are some ways:\n\n1. Eye Strain: Screens tire the eyes.\n"
                          "2. Poor Posture: Hunching hurts.\n\nFind a balance.")
    assert main_text(doc) == "Here are some ways:\n\n1. Eye Strain:\n2. Poor Posture:\n\nFind a balance."
    assert promises(doc) == 2


@pytest.mark.parametrize("text", [
    "<scope>a<promise/><async>b<scope>c<promise/><async>d</async></scope>e</async>f</scope>",
    "<scope>a<promise/><async>b<promise/><async>c</async>d</async></scope>",  # belongs to the outer scope
    "<scope><promise/><async></async></scope>",
    "plain text with <Scope> and <scope > and <promise> and <async/>",
    "",
])
def test_round_trip(text):
    assert render(parse(text)) == text


def test_nested_strip_splices_each_span_in_place():
    doc = parse("<scope>A<promise/><async>[b<scope>C<promise/><async>d</async></scope>e]</async>F</scope>")
    assert strip(doc) == "A[bCde]F" and main_text(doc) == "AF" and promises(doc) == 2


@pytest.mark.parametrize("text, where, message", [
    ("<scope>a<promise/>b</scope>", "1:9", "not followed directly by <async>"),
    ("<scope>a\n<promise/>", "2:1", "not followed directly by <async>"),
    ("x<promise/><async>y</async>", "1:2", "outside any <scope>"),
    ("<scope>a<async>b</async></scope>", "1:9", "not right after a <promise/>"),
    ("<scope>a\nb", "1:1", "<scope> is never closed"),
    ("a\n</scope>", "2:1", "</scope> without a matching <scope>"),
    ("<scope>a<promise/><async>b</scope></async>", "1:27", "before the <async> opened at 1:19 is closed"),
    ("<scope>a</async></scope>", "1:9", "</async> without a matching <async>"),
])
def test_errors_say_where(text, where, message):
    with pytest.raises(PastaError, match=message) as e:
        parse(text)
    assert str(e.value).startswith(where + ":")
    assert isinstance(e.value, MarkupError) and isinstance(e.value, ValueError)
    again = pickle.loads(pickle.dumps(e.value))  # survives worker processes like MarkupError
    assert type(again) is PastaError and str(again) == str(e.value)


def test_render_refuses_trees_that_cannot_round_trip():
    with pytest.raises(PastaError, match="outside any scope"):
        render(PastaDoc((Promise((Text("x"),)),)))
    with pytest.raises(PastaError, match="contains the tag"):
        render(PastaDoc((Text("see <scope> here"),)))
    assert has_tags("a<promise/>") and not has_tags("a <promise> b")


ASPD_DOCS = [
    # list items with heads, serial text around
    "Here are two tips:\n<branchgroup>\n<branch title=\"Diet\">1. **Diet**: Eat a balanced diet.</branch>\n"
    "<branch title=\"Sleep\">2. Sleep - Get eight hours.\nNaps help too.</branch>\n</branchgroup>\nIn short, habits.",
    # titles only inside the text, one not at all, one branch empty; two groups
    "<branchgroup>\n<branch title=\"Python\">Python is simple and readable.</branch>\n"
    "<branch title=\"Rust\">Rust: safe and fast.</branch>\n<branch title=\"Empty\"></branch>\n"
    "<branch title=\"Go\">Compiles quickly and runs fast.</branch>\n</branchgroup>\nMiddle text.\n"
    "<branchgroup>\n<branch title=\"A\">Alpha</branch>\n<branch title=\"B\">Beta beta.</branch>\n</branchgroup>",
    # inline tags (flatten then equals only up to whitespace for the markup, but exactly for the doc)
    "Intro <branchgroup><branch title=\"Work\">Working hard pays off in the end.</branch><branch title=\"Rest\"> Rest, "
    "too.  </branch></branchgroup> end",
    # no groups at all
    "Just a serial answer.\nTwo lines.",
]


# A branch whose whole text is its head ("Alpha", four words or fewer) has nothing left to run async.
@pytest.mark.parametrize("markup, n_promises", list(zip(ASPD_DOCS, [2, 3, 2, 0], strict=True)))
def test_from_aspd_strips_to_flatten(markup, n_promises):
    doc = parse_aspd(markup)
    pasta = from_aspd(doc)
    assert strip(pasta) == flatten(doc)
    assert parse(render(pasta)) == pasta
    assert promises(pasta) == n_promises
    assert sum(isinstance(n, Scope) for n in pasta.children) == len(doc.groups)


def test_from_aspd_keeps_heads_synchronous():
    pasta = from_aspd(parse_aspd(ASPD_DOCS[0]))
    assert render(pasta) == (
        "Here are two tips:\n<scope>1. **Diet**:<promise/><async> Eat a balanced diet.</async>\n"
        "2. Sleep -<promise/><async> Get eight hours.\nNaps help too.</async></scope>\nIn short, habits.")
    rendered = render(from_aspd(parse_aspd(ASPD_DOCS[1])))
    assert "Python<promise/><async> is simple" in rendered  # the title where the text starts with it
    assert "Rust:<promise/><async> safe" in rendered  # a Head: lead
    assert "Compiles quickly and runs<promise/><async> fast." in rendered  # else the first words
    assert "Working hard pays off<promise/>" in render(from_aspd(parse_aspd(ASPD_DOCS[2])))  # "Work" no head


def test_from_aspd_refuses_literal_tags():
    with pytest.raises(PastaError):
        from_aspd(parse_aspd("<branchgroup>\n<branch title=\"a\">x <scope></branch>\n"
                             "<branch title=\"b\">y</branch>\n</branchgroup>"))


LIST_ANSWER = """Here are tips:

1. **Diet**: Eat a balanced diet.
   Include vegetables.
2. Sleep - Get eight hours.
3. Exercise regularly.
4. Hydration
   - water
   - tea

In summary, habits matter."""


def test_annotate_lists_heads_elaborations_and_nested_children():
    doc = annotate_lists(LIST_ANSWER)
    assert doc is not None and strip(doc) == LIST_ANSWER
    assert render(doc) == """Here are tips:

<scope>1. **Diet**:<promise/><async> Eat a balanced diet.
   Include vegetables.</async>
2. Sleep -<promise/><async> Get eight hours.</async>
3. Exercise regularly.
4. Hydration<promise/><async>
   - water
   - tea</async></scope>

In summary, habits matter."""


@pytest.mark.parametrize("text", [
    "- **Speed:** Rust is fast.\n- **Safety:** Rust checks memory.\n* Plain item",
    "Intro.\n1) Paris: the capital of France.\n2) Berlin: the capital of Germany.\nOutro.",
    "Two lists.\n- A: one\n- B: two\n\nAnd then:\n\n1. C: three\n2. D: four\n",
])
def test_annotate_lists_round_trips(text):
    doc = annotate_lists(text)
    assert doc is not None and strip(doc) == text and parse(render(doc)) == doc
    assert promises(doc) >= 2


@pytest.mark.parametrize("text", [
    "No list here, just prose: it goes on.",
    "1. Eat well.\n2. Sleep well.\n3. Move.",  # items without elaboration
    "- A: one\n- plain\n- plain too",  # only one elaborated item
    "- A: one\n- B: <scope> literal",  # literal tags: not annotated
    "```\n- A: one\n- B: two\n```",  # code stays code
])
def test_annotate_lists_declines(text):
    assert annotate_lists(text) is None
