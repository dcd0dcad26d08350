"""Tests for aspd.markup: parsing, rendering, flattening, token text and metrics."""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aspd.bench.metrics import ParallelStats, abn, dp, parallel_stats, ppd
from aspd.markup import (
    Branch,
    Document,
    Group,
    MarkupError,
    Serial,
    flatten,
    parse,
    render,
    same_text,
    similarity,
    validate,
)
from aspd.token_text import from_token_text, to_token_text
from aspd.tokens import DEFAULT_TOKENS, SpecialTokens, is_head

DESIGN_EXAMPLE = """A driver works 3 hours at $40/hour and drives 60 miles.
<branchgroup>
<branch title="Gross pay">Pay: 3 x 40 = $120.</branch>
<branch title="Fuel cost">Fuel: 60 / 30 x $2 = $4.</branch>
</branchgroup>
Profit: 120 - 4 = $116."""

DESIGN_DOC = Document(
    (
        Serial("A driver works 3 hours at $40/hour and drives 60 miles."),
        Group((Branch("Gross pay", "Pay: 3 x 40 = $120."), Branch("Fuel cost", "Fuel: 60 / 30 x $2 = $4."))),
        Serial("Profit: 120 - 4 = $116."),
    )
)


def g(*pairs: tuple[str, str]) -> Group:
    return Group(tuple(Branch(t, b) for t, b in pairs))


# ---------------------------------------------------------------------------------------------------------
# parse / render: examples


def test_parse_design_example() -> None:
    assert parse(DESIGN_EXAMPLE) == DESIGN_DOC
    assert render(DESIGN_DOC) == DESIGN_EXAMPLE


def test_empty_and_serial_only() -> None:
    assert parse("") == Document(())
    assert render(Document(())) == ""
    assert flatten(Document(())) == ""
    assert parse("just text\n") == Document((Serial("just text\n"),))
    assert render(Document((Serial("just text\n"),))) == "just text\n"


def test_render_exact_layout_adjacent_and_leading_groups() -> None:
    doc = Document((g(("a", "1"), ("b", "2")), g(("c", "3"), ("d", "4")), Serial("end")))
    text = render(doc)
    assert text == (
        "<branchgroup>\n"
        '<branch title="a">1</branch>\n<branch title="b">2</branch>\n'
        "</branchgroup>\n"
        "<branchgroup>\n"
        '<branch title="c">3</branch>\n<branch title="d">4</branch>\n'
        "</branchgroup>\n"
        "end"
    )
    assert parse(text) == doc


def test_one_newline_removed_around_groups_only() -> None:
    # One "\n" before <branchgroup> and one after </branchgroup> are separators; the rest is content.
    text = 'a\n\n<branchgroup><branch title="x">1</branch><branch title="y">2</branch></branchgroup>\n\nb'
    assert parse(text) == Document((Serial("a\n"), g(("x", "1"), ("y", "2")), Serial("\nb")))
    # "\r\n" is not a separator: the "\r" stays (lossless).
    text = (
        'a\r\n<branchgroup>\r\n<branch title="x">1</branch>\r\n<branch title="y">2</branch>\r\n</branchgroup>'
    )
    assert parse(text) == Document((Serial("a\r"), g(("x", "1"), ("y", "2"))))
    # Between two groups: the single rendered "\n" is the separator; a blank line is dropped as well.
    two = "<branchgroup>\n" + '<branch title="x">1</branch><branch title="y">2</branch>' + "</branchgroup>"
    assert parse(two + "\n" + two) == parse(two + "\n\n" + two) == Document((parse(two).segments[0],) * 2)
    assert parse(two + "\n \n" + two).segments[1] == Serial(" ")


def test_whitespace_inside_group_is_dropped_bodies_verbatim() -> None:
    text = (
        "intro\n<branchgroup>  \n\t<branch  title = 'A' >\n  body A\n</branch >\n\n"
        '   <branch title="B">body B</branch>\n  </branchgroup >'
    )
    assert parse(text) == Document((Serial("intro"), g(("A", "\n  body A\n"), ("B", "body B"))))


def test_title_escapes_and_strip() -> None:
    text = (
        '<branchgroup>\n<branch title=" &quot;R&amp;D&quot; &lt;x&gt; ">1</branch>\n'
        '<branch title="R&D">2</branch>\n<branch title=\'it&apos;s "q"\'>3</branch>\n</branchgroup>'
    )
    doc = parse(text)
    assert doc.groups[0].titles == ('"R&D" <x>', "R&D", 'it\'s "q"')
    rendered = render(doc)
    assert '<branch title="&quot;R&amp;D&quot; &lt;x&gt;">' in rendered
    assert '<branch title="it\'s &quot;q&quot;">' in rendered
    assert parse(rendered) == doc
    # A literal entity in a title survives the round trip (escaped once more on render).
    doc2 = Document((g(("&quot;", "1"), ("&amp;", "2")),))
    assert parse(render(doc2)) == doc2


def test_text_that_only_looks_like_tags_is_text() -> None:
    text = (
        "Run `git checkout <branch>` then <branches> and <Branch title='x'>.\n<branchgroup>\n"
        '<branch title="a">git merge <branch-name></branch>\n<branch title="b">a < b && c > d</branch>\n'
        "</branchgroup>"
    )
    doc = parse(text)
    assert doc.segments[0] == Serial("Run `git checkout <branch>` then <branches> and <Branch title='x'>.")
    assert doc.groups[0].branches[0].text == "git merge <branch-name>"
    assert render(doc) == text


def test_normalized() -> None:
    doc = Document((Serial(""), Serial("a"), Serial("b"), g((" x ", "1"), ("y", " 2 ")), Serial("")))
    assert doc.normalized() == Document((Serial("ab"), g(("x", "1"), ("y", " 2 "))))
    assert doc.normalized().normalized() == doc.normalized()
    assert parse(render(doc)) == doc.normalized()


# ---------------------------------------------------------------------------------------------------------
# parse: errors (message and position)

GROUP2 = '<branch title="a">1</branch>\n<branch title="b">2</branch>\n'

ERROR_CASES: list[tuple[str, str, str, int]] = [
    # (markup, expected message part, anchor whose n-th occurrence is the position, n)
    ("x\n<branchgroup>\n" + GROUP2, "unclosed <branchgroup>", "<branchgroup>", 0),
    ('<branchgroup>\n<branch title="a">1', "unclosed <branch title='a'>: reached the end", "<branch ", 0),
    (
        '<branchgroup>\n<branch title="a">1</branch>\n<branch title="b">2\n</branchgroup>',
        "unclosed <branch title='b'>: found </branchgroup> at 4:1",
        '<branch title="b"',
        0,
    ),
    (
        '<branchgroup>\n<branch title="a">1\n<branch title="b">2</branch>\n</branchgroup>',
        "unclosed <branch title='a'>: found another <branch> at 3:1",
        '<branch title="a"',
        0,
    ),
    ("text </branch> more", "stray </branch>", "</branch>", 0),
    ("<branchgroup>\n" + GROUP2 + "</branch>\n</branchgroup>", "stray </branch>", "</branch>", 2),
    ("text\n</branchgroup>", "stray </branchgroup>", "</branchgroup>", 0),
    (
        "<branchgroup>\n" + GROUP2 + "</branchgroup>\n</branchgroup>",
        "stray </branchgroup>",
        "</branchgroup>",
        1,
    ),
    ("<branchgroup>\n<branchgroup>\n", "nested <branchgroup> (the group opened at 1:1", "<branchgroup>", 1),
    (
        '<branchgroup>\n<branch title="a">x<branchgroup>',
        "nested <branchgroup> inside a <branch>",
        "<branchgroup>",
        1,
    ),
    ('intro <branch title="a">1</branch>', "<branch> outside a <branchgroup>", "<branch ", 0),
    (
        '<branchgroup>\n<branch title="a">1</branch>\nstray words\n<branch title="b">2</branch>\n</branchgroup>',
        "text between branches",
        "stray words",
        0,
    ),
    ("<branchgroup>\nlead " + GROUP2 + "</branchgroup>", "text between branches", "lead", 0),
    ("<branchgroup>\n" + GROUP2 + "tail\n</branchgroup>", "text between branches", "tail", 0),
    (
        '<branchgroup>\n<branch title="a">1</branch>\n</branchgroup>',
        "has 1 branch(es); a group needs at least 2",
        "<branchgroup>",
        0,
    ),
    ("a\n<branchgroup>\n</branchgroup>", "has 0 branch(es)", "<branchgroup>", 0),
    ('<branchgroup>\n<branch title="">1</branch>\n', "empty title", '<branch title=""', 0),
    (
        '<branchgroup>\n<branch title="a">1</branch>\n<branch title="  ">2',
        "empty title",
        '<branch title="  "',
        0,
    ),
    (
        '<branchgroup>\n<branch title="a">1</branch>\n<branch title=" a ">2</branch>\n</branchgroup>',
        "duplicate title 'a' in one group (first used at 2:1)",
        '<branch title=" a "',
        0,
    ),
    (
        "<branchgroup>\n" + GROUP2 + "<branch>3</branch>\n</branchgroup>",
        "without a title attribute",
        "<branch>",
        0,
    ),
    ('<branchgroup>\n<branch name="a">1</branch>\n', "without a title attribute", "<branch name", 0),
    ("<branchgroup>\n<branch title=a>1</branch>\n", "must be quoted", "a>1", 0),
    ("<branchgroup>\n<branch title>1</branch>\n", 'expected title="..."', ">1", 0),
    ('<branchgroup>\n<branch title="a>1</branch>\n</branchgroup>', "unterminated title attribute", '"a', 0),
    ('<branchgroup>\n<branch title="a" id="1">1</branch>\n', "expected '>' after the title", 'id="1"', 0),
    ('<branchgroup>\n<branch title="a"/>\n', "expected '>' after the title", "/>", 0),
    ('<branchgroup class="x">\n', "malformed <branchgroup> tag", "<branchgroup", 0),
    ("<branchgroup>\n" + GROUP2 + "</branchgroup x>", "malformed </branchgroup> tag", "</branchgroup", 0),
    ('<branchgroup>\n<branch title="a">1</branch x>', "malformed </branch> tag", "</branch x", 0),
    ("text ending in </branch", "malformed </branch> tag", "</branch", 0),
]


def _nth(text: str, anchor: str, n: int) -> int:
    pos = -1
    for _ in range(n + 1):
        pos = text.index(anchor, pos + 1)
    return pos


@pytest.mark.parametrize(("markup", "message", "anchor", "nth"), ERROR_CASES)
def test_parse_errors(markup: str, message: str, anchor: str, nth: int) -> None:
    with pytest.raises(MarkupError) as info:
        parse(markup)
    err = info.value
    assert message in err.message
    assert err.position == _nth(markup, anchor, nth)
    line = markup.count("\n", 0, err.position) + 1
    column = err.position - (markup.rfind("\n", 0, err.position) + 1) + 1
    assert (err.line, err.column) == (line, column)
    assert str(err).startswith(f"{line}:{column}: ")


def test_error_str_and_pickle() -> None:
    with pytest.raises(MarkupError) as info:
        parse("line one\nline two </branch>")
    err = info.value
    assert str(err) == "2:10: stray </branch> without an open <branch>"
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.message, copy.position, copy.line, copy.column, str(copy)) == (
        err.message,
        err.position,
        err.line,
        err.column,
        str(err),
    )
    assert str(MarkupError("plain")) == "plain"
    assert str(MarkupError("m", 7)) == "offset 7: m"


# ---------------------------------------------------------------------------------------------------------
# validate (documents built in code)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (Document((g(("a", "1")),)), "segment 0: group has 1 branch(es)"),
        (Document((Serial("x"), Group(()))), "segment 1: group has 0 branch(es)"),
        (Document((g(("a", "1"), (" ", "2")),)), "segment 0, branch 1: empty title"),
        (
            Document((g(("a", "1"), ("a ", "2")),)),
            "segment 0, branch 1: duplicate title 'a' (same as branch 0)",
        ),
        (Document((g(("a\nb", "1"), ("c", "2")),)), "contains a line break"),
        (Document(("text",)), "segment 0: expected Serial or Group, got str"),  # type: ignore[arg-type]
        (Document((Serial(3),)), "must be str"),  # type: ignore[arg-type]
    ],
)
def test_validate_errors(doc: Document, message: str) -> None:
    with pytest.raises(MarkupError) as info:
        validate(doc)
    assert message in str(info.value)
    assert info.value.position is None
    with pytest.raises(MarkupError):
        render(doc)


def test_validate_accepts_non_normalised_docs() -> None:
    # validate raises on a bad doc; an accepted one renders and reads back as its normalised form.
    for doc in (Document((Serial(""), Serial("a"), g((" a ", "1"), ("b", "")), Serial("git checkout <branch>"))),
                DESIGN_DOC):
        assert validate(doc) is None
        assert parse(render(doc)) == doc.normalized()


@pytest.mark.parametrize(
    "doc",
    [
        Document((Serial("a <branchgroup> b"),)),
        Document((Serial("ends with </branch"),)),
        Document((Serial("ends with </bra"), Serial("nch"))),  # tag-like only once normalised
        Document((g(("a", "x </branch> y"), ("b", "2")),)),
        Document((g(("a", '<branch title="c">'), ("b", "</branchgroup>")), Serial("<branchgroup\n"))),
    ],
)
def test_text_that_reads_as_tags_is_escaped(doc: Document) -> None:
    # A model may write a literal tag as words: the answer still renders, and parses back to itself.
    validate(doc)
    text = render(doc)
    assert "&lt;" in text
    assert parse(text) == doc.normalized()
    assert flatten(parse(text)) == flatten(doc)


def test_text_escapes_are_minimal_and_reversible() -> None:
    cases = {
        "x </branch> y": "x &lt;/branch> y",
        "<branch title": "&lt;branch title",
        "&lt;/branchgroup>": "&amp;lt;/branchgroup>",  # already looks escaped: one more level
        "&amp;lt;branchgroup": "&amp;amp;lt;branchgroup",
        "&amp;&lt;branch\ttitle": "&amp;&amp;lt;branch\ttitle",
        # Not tag-like: verbatim, as before.
        "a < b && c > d, &amp; &lt;b> <branch> <branches> &lt;branch> &lt;branchy </branches": None,
    }
    for text, escaped in cases.items():
        doc = Document((Serial(text),))
        rendered = render(doc)
        assert rendered == (text if escaped is None else escaped)
        assert parse(rendered) == doc
    # Hand-written markup: "&lt;" before a tag name is read as "<"; anything else stays as written.
    assert parse("say &lt;/branch> and &lt;b>") == Document((Serial("say </branch> and &lt;b>"),))


# ---------------------------------------------------------------------------------------------------------
# flatten, same_text, similarity


def test_flatten_gives_back_the_answer() -> None:
    answer = (
        "A driver works 3 hours at $40/hour and drives 60 miles.\nPay: 3 x 40 = $120.\n"
        "Fuel: 60 / 30 x $2 = $4.\nProfit: 120 - 4 = $116."
    )
    assert flatten(parse(DESIGN_EXAMPLE)) == answer
    # Tags glued to the text still flatten to the answer up to whitespace.
    glued = 'Intro:<branchgroup><branch title="a">one</branch><branch title="b">two</branch></branchgroup>End'
    assert flatten(parse(glued)) == "Intro:\none\ntwo\nEnd"
    assert same_text(flatten(parse(glued)), "Intro: one two End")
    # Empty bodies add nothing; titles are not content.
    assert flatten(Document((Serial("x"), g(("a", ""), ("b", "y"))))) == "x\ny"


def test_same_text_and_similarity() -> None:
    assert same_text(" a  b\n\nc ", "a b c")
    assert not same_text("ab", "a b")
    assert similarity("", "  ") == 1.0
    assert similarity("a b c", "a  b\nc") == 1.0
    assert similarity("a b c d", "x y") == 0.0
    assert 0.0 < similarity("a b c d", "a b x d") < 1.0


# ---------------------------------------------------------------------------------------------------------
# token text

DESIGN_TOKENS = (
    "A driver works 3 hours at $40/hour and drives 60 miles."
    "<|title|>Gross pay<|/title|><|title|>Fuel cost<|/title|><|para|>"
    "<|branch|>Gross pay: Pay: 3 x 40 = $120.<|/branch|><|branch|>Fuel cost: Fuel: 60 / 30 x $2 = $4.<|/branch|>"
    "<|/para|>Profit: 120 - 4 = $116."
)


def test_token_text_example() -> None:
    assert to_token_text(DESIGN_DOC) == DESIGN_TOKENS
    assert from_token_text(DESIGN_TOKENS) == DESIGN_DOC


def test_token_text_custom_tokens() -> None:
    tokens = SpecialTokens("[T]", "[/T]", "[B]", "[/B]", "[P]", "[/P]")
    text = to_token_text(DESIGN_DOC, tokens)
    assert text.count("[T]") == 2 and "<|" not in text
    assert from_token_text(text, tokens) == DESIGN_DOC


def test_token_text_rejects_special_tokens_in_text() -> None:
    with pytest.raises(
        MarkupError, match=re.escape("segment 0, branch 1: text contains the special token '<|para|>'")
    ):
        to_token_text(Document((g(("a", "1"), ("b", "x<|para|>")),)))
    with pytest.raises(MarkupError, match="special token"):
        to_token_text(Document((Serial("<|/branch|>"),)))
    # Text ending in the first characters of a custom token would be read back wrongly.
    tokens = SpecialTokens("@@", "@/", "@b", "@/b", "@p", "@/p")
    with pytest.raises(MarkupError, match="cannot be written unambiguously"):
        to_token_text(Document((Serial("a @"), g(("x", "1"), ("y", "2")))), tokens)
    assert from_token_text(to_token_text(DESIGN_DOC, tokens), tokens) == DESIGN_DOC
    with pytest.raises(ValueError, match="distinct"):
        from_token_text("x", SpecialTokens(title="<|x|>", title_end="<|x|>"))


T = "<|title|>a<|/title|><|title|>b<|/title|>"
B = "<|branch|>a: 1<|/branch|><|branch|>b: 2<|/branch|>"

TOKEN_ERRORS: list[tuple[str, str, str, int]] = [
    ("x<|/title|>", "stray <|/title|>", "<|/title|>", 0),
    ("x<|branch|>a: 1<|/branch|>", "<|branch|> outside a parallel group", "<|branch|>", 0),
    ("x<|/branch|>", "stray <|/branch|>", "<|/branch|>", 0),
    ("x<|para|>", "<|para|> without announced titles", "<|para|>", 0),
    ("x<|/para|>", "stray <|/para|>", "<|/para|>", 0),
    ("s<|title|>a", "unclosed <|title|>", "<|title|>", 0),
    ("s<|title|>a<|title|>b<|/title|>", "unclosed <|title|>", "<|title|>", 0),
    ("s" + T, "titles announced but no <|para|>", "<|title|>", 0),
    ("s" + T + " <|para|>", "text after <|/title|>", " <|para|>", 0),
    ("s" + T + "<|branch|>", "expected <|title|> or <|para|>", "<|branch|>", 0),
    (
        "<|title|>a<|/title|><|para|><|branch|>a: 1<|/branch|><|/para|>",
        "announces 1 title(s)",
        "<|title|>",
        0,
    ),
    ("<|title|> <|/title|><|title|>b<|/title|><|para|>", "empty title", "<|title|>", 0),
    (
        "<|title|>a<|/title|><|title|>a<|/title|><|para|>",
        "duplicate title 'a' (first at 1:1)",
        "<|title|>",
        1,
    ),
    (
        T + "<|para|>" + "<|branch|>b: 2<|/branch|>",
        "branch 1 must start with its announced title 'a: '",
        "b: 2",
        0,
    ),
    (T + "<|para|>" + "<|branch|>a:1<|/branch|>", "must start with its announced title 'a: '", "a:1", 0),
    (T + "<|para|>\n" + B + "<|/para|>", "text between the control tokens", "\n", 0),
    (T + "<|para|><|branch|>a: 1<|/branch|> <|branch|>b: 2<|/branch|><|/para|>", "text between", " <|b", 0),
    (T + "<|para|>" + B + "x<|/para|>", "text between", "x<|/para|>", 0),
    (
        T + "<|para|><|branch|>a: 1<|/branch|><|/para|>",
        "<|/para|> after 1 of 2 announced branches",
        "<|/para|>",
        0,
    ),
    (T + "<|para|><|branch|>a: 1", "unclosed <|branch|>", "<|branch|>", 0),
    (T + "<|para|><|branch|>a: 1<|branch|>", "unclosed <|branch|>", "<|branch|>", 0),
    (T + "<|para|><|branch|>a: 1<|/branch|>", "input ended after 1 of 2 branches", "<|para|>", 0),
    (T + "<|para|><|title|>", "expected <|branch|> for branch 1 of 2", "<|title|>", 2),
    (T + "<|para|>" + B, "unclosed parallel group", "<|para|>", 0),
    (T + "<|para|>" + B + "<|branch|>c: 3<|/branch|><|/para|>", "more branches than the 2", "<|branch|>c", 0),
    (T + "<|para|>" + B + "<|title|>", "expected <|/para|> after the last branch", "<|title|>", 2),
]


@pytest.mark.parametrize(("text", "message", "anchor", "nth"), TOKEN_ERRORS)
def test_token_text_errors(text: str, message: str, anchor: str, nth: int) -> None:
    with pytest.raises(MarkupError) as info:
        from_token_text(text)
    assert message in info.value.message
    assert info.value.position == _nth(text, anchor, nth)
    assert info.value.line is not None and str(info.value).startswith(
        f"{info.value.line}:{info.value.column}: "
    )


# ---------------------------------------------------------------------------------------------------------
# metrics


def test_metrics_hand_computed() -> None:
    # serial: "a b c" (3) + titles "x y" (2) and "z" (1) + "d" (1) = 7; parallel: 2 + 3 = 5.
    doc = Document((Serial("a b c"), g(("x y", "p q"), ("z", "r s t")), Serial("d")))
    assert parallel_stats(doc) == ParallelStats(serial_tokens=7, parallel_tokens=5, groups=1, branches=2)
    assert parallel_stats(doc).total_tokens == 12
    assert dp(doc) == pytest.approx(5 / 12)
    assert dp(Document(())) == 0.0
    assert dp(doc, count=len) == pytest.approx((3 + 5) / (5 + 3 + 1 + 1 + 3 + 5))
    three = Document((g(("a", "1"), ("b", "2"), ("c", "3")), Serial("x"), g(("a", "1"), ("b", "2"))))
    serial = Document((Serial("only serial"),))
    docs = [doc, three, serial, Document(())]
    assert abn(docs) == pytest.approx((2 + 3 + 2) / 3)
    assert ppd(docs) == pytest.approx(2 / 4)
    assert abn([serial]) == 0.0 and ppd([]) == 0.0 and abn([]) == 0.0
    assert ppd(iter(docs)) == pytest.approx(0.5) and abn(iter(docs)) == pytest.approx(7 / 3)


# ---------------------------------------------------------------------------------------------------------
# properties

_FRAGMENTS = [
    "a", "b", "word", "Branch", "branch", "title", "group", "=", ":", ": ", "/", " ", "  ", "\t", "\n", "\n\n",
    "\r", "<", ">", "&", "&amp;", "&quot;", "&lt;", '"', "'", "<b>", "</b>", "<branch>", "<branches>", "<|",
    "|>", "é", "日本", "\u2028",
]  # fmt: skip
_TAG_PIECES = [
    "<branchgroup>", "</branchgroup>", '<branch title="t">', '<branch title="u">', "</branch>",
    '<branch title="t"', "<branch title=", "</branch", "<branchgroup",
]  # fmt: skip
# Pieces of text that reads as tags, or as their escapes ("&lt;branch", "&amp;lt;/branch>"...).
_TAGGY = [*_TAG_PIECES, "&lt;", "&amp;lt;", "&amp;amp;lt;", "lt;", "amp;", "branchgroup", "/branch", "&"]


def _no_tokens(s: str) -> bool:
    return not any(t in s for t in DEFAULT_TOKENS.all())


def _plain(s: str) -> bool:
    # Reads as itself in hand-written markup: nothing that render would escape.
    return _no_tokens(s) and render(Document((Serial(s),))) == s


def _text_strategy(pieces: list[str], ok: Callable[[str], bool]) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(pieces), max_size=12).map("".join).filter(ok)


def _title_strategy(pieces: list[str], ok: Callable[[str], bool]) -> st.SearchStrategy[str]:
    one_line = [f for f in pieces if "\n" not in f and "\r" not in f]
    return st.lists(st.sampled_from(one_line), min_size=1, max_size=5).map("".join).filter(
        lambda s: bool(s.strip()) and ok(s)
    )


# Plain texts and titles (as a rewriter writes them by hand), and any texts and titles (tag-like included).
texts = _text_strategy(_FRAGMENTS, _plain)
titles = _title_strategy(_FRAGMENTS, _plain)
any_texts = _text_strategy(_FRAGMENTS + _TAGGY * 2, _no_tokens)
any_titles = _title_strategy(_FRAGMENTS + _TAGGY, _no_tokens)
groups = st.lists(st.tuples(any_titles, any_texts), min_size=2, max_size=5, unique_by=lambda p: p[0].strip()).map(
    lambda pairs: Group(tuple(Branch(t, b) for t, b in pairs))
)
documents = st.lists(st.one_of(any_texts.map(Serial), groups), max_size=6).map(lambda s: Document(tuple(s)))

FAST = settings(max_examples=200, deadline=None)


@FAST
@given(documents)
def test_render_parse_roundtrip(doc: Document) -> None:
    text = render(doc)
    back = parse(text)
    assert back == doc.normalized()
    assert back.normalized() == back
    assert render(back) == text


@FAST
@given(documents)
def test_flatten_keeps_text(doc: Document) -> None:
    assert flatten(parse(render(doc))) == flatten(doc)
    assert same_text(flatten(parse(render(doc))), flatten(doc))
    norm = doc.normalized()
    pieces = [s.text for s in norm.segments if isinstance(s, Serial)]
    # Head titles are shown; label titles are not.
    pieces += [(b.title.strip() if is_head(b.title) else "") + b.text for grp in norm.groups for b in grp.branches]
    # Flattening only drops tags and labels: every word of every piece is there, and nothing else.
    assert sorted(flatten(doc).split()) == sorted(w for p in pieces for w in p.split())


@FAST
@given(documents)
def test_token_text_roundtrip(doc: Document) -> None:
    assert from_token_text(to_token_text(doc)) == doc.normalized()


@FAST
@given(documents)
def test_metrics_bounds(doc: Document) -> None:
    stats = parallel_stats(doc)
    assert stats.groups == len(doc.groups)
    assert 0.0 <= dp(doc) <= 1.0
    assert ppd([doc]) == (1.0 if doc.groups else 0.0)
    assert abn([doc]) == 0.0 or abn([doc]) >= 2.0


_SPACE = st.sampled_from(["", " ", "\n", "\n\n", "\t ", "\r\n"])


@FAST
@given(
    st.lists(
        st.tuples(
            texts,
            st.lists(st.tuples(titles, texts), min_size=2, max_size=5, unique_by=lambda p: p[0].strip()),
        ),
        min_size=1,
        max_size=3,
    ),
    texts,
    st.data(),
)
def test_flatten_of_rewriter_markup_gives_back_the_answer(
    parts: list[tuple[str, list[tuple[str, str]]]], tail: str, data: st.DataObject
) -> None:
    # A rewriter puts tags (with any whitespace around them) into an answer whose pieces are separated by
    # whitespace; flattening the parsed markup must give back the answer up to whitespace.
    answer: list[str] = []
    markup: list[str] = []
    for serial, branches in parts:
        answer += [serial, "\n"]
        markup += [serial, data.draw(_SPACE), "<branchgroup>", data.draw(_SPACE)]
        for title, body in branches:
            answer += [title.strip() + body if is_head(title) else body, "\n"]  # a head title is shown
            esc = title.replace("&", "&amp;").replace('"', "&quot;")
            markup += [f'<branch title="{esc}">', body, "</branch>", data.draw(_SPACE)]
        markup += ["</branchgroup>", data.draw(_SPACE)]
    answer.append(tail)
    markup.append(tail)
    doc = parse("".join(markup))
    assert same_text(flatten(doc), "".join(answer))
    assert [len(grp.branches) for grp in doc.groups] == [len(b) for _, b in parts]


@FAST
@given(st.lists(st.sampled_from(_FRAGMENTS + _TAG_PIECES * 3), max_size=30).map("".join))
def test_parse_never_crashes_and_is_stable(text: str) -> None:
    # Arbitrary input: either a MarkupError with a position inside the input, or a document that is
    # valid, normalised and survives a render/parse round trip.
    try:
        doc = parse(text)
    except MarkupError as e:
        assert e.position is not None and 0 <= e.position <= len(text)
        return
    validate(doc)
    assert doc.normalized() == doc
    assert parse(render(doc)) == doc
    assert same_text(flatten(doc), flatten(parse(render(doc))))


_TOKEN_PIECES = list(DEFAULT_TOKENS.all()) + ["a", "b", "a: ", "b: ", ": ", " ", "\n", "x"]


@FAST
@given(st.lists(st.sampled_from(_TOKEN_PIECES), max_size=30).map("".join))
def test_from_token_text_never_crashes(text: str) -> None:
    try:
        doc = from_token_text(text)
    except MarkupError as e:
        assert e.position is not None and 0 <= e.position <= len(text)
        return
    assert from_token_text(to_token_text(doc)) == doc


def _mutate(text: str, data: st.DataObject, pieces: list[str]) -> str:
    # A few random edits (insert a piece, delete a slice) of a valid text: inputs near the valid ones.
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        if data.draw(st.booleans()):
            text = text[:i] + data.draw(st.sampled_from(pieces)) + text[i:]
        else:
            text = text[:i] + text[i + data.draw(st.integers(1, 12)) :]
    return text


@FAST
@given(documents, st.data())
def test_parse_mutated_markup(doc: Document, data: st.DataObject) -> None:
    text = _mutate(render(doc), data, _TAG_PIECES + [" ", "\n", "x", '"', "="])
    try:
        back = parse(text)
    except MarkupError as e:
        assert e.position is not None and 0 <= e.position <= len(text)
        return
    validate(back)
    assert back.normalized() == back
    assert parse(render(back)) == back


@FAST
@given(documents, st.data())
def test_from_token_text_mutated(doc: Document, data: st.DataObject) -> None:
    text = _mutate(to_token_text(doc), data, list(DEFAULT_TOKENS.all()) + ["a: ", " ", "x"])
    try:
        back = from_token_text(text)
    except MarkupError as e:
        assert e.position is not None and 0 <= e.position <= len(text)
        return
    assert back.normalized() == back
    assert from_token_text(to_token_text(back)) == back


def test_head_titles_are_shown_and_label_titles_hidden() -> None:
    heads = Group((Branch("1. **Diet**:", " Eat more greens."), Branch("2. **Sleep**:", "\n   Eight hours.")))
    labels = Group((Branch("Diet", "Eat more greens."), Branch("Sleep", "Eight hours.")))
    doc = Document((Serial("Tips:"), heads, Serial("Also:"), labels))
    assert flatten(doc) == "Tips:\n1. **Diet**: Eat more greens.\n2. **Sleep**:\n   Eight hours.\nAlso:\nEat more greens.\nEight hours."
    assert parse(render(doc)) == doc
    tt = to_token_text(doc)
    assert "<|branch|>1. **Diet**: Eat more greens.<|/branch|>" in tt  # the head is the prefix; no ': ' added
    assert "<|branch|>Diet: Eat more greens.<|/branch|>" in tt
    assert from_token_text(tt) == doc
    assert [is_head(t) for t in ("1. x", "- x", "* x", "## x", "**x**", "__x__", "Cost:", "x", "3D art", "*args", "#tag")] == [
        True, True, True, True, True, True, True, False, False, False, False]
