"""Layout: hand-checked masks/positions/labels, and the mask really isolating siblings in a model forward."""

import pytest
import torch

from aspd.attention import AttentionBackendError, check_backend, forward_layout
from aspd.layout import Kind, Span, build_layout
from aspd.markup import Branch, Document, Group, Serial
from aspd.sample import chat_spans
from aspd.testing import ARCHS, tiny_model, tiny_tokenizer
from aspd.tokens import add_control_tokens, branch_prefix_ids, text_ids

# Two groups, five branches, one id per token (ids = index + 100 so labels are easy to read).
#  idx  kind        owner
#  0    PROMPT      main
#  1    TITLE       main
#  2    PARA        main
#  3-5  PREFIX,BODY g0b0 (3 tokens)
#  6-7  PREFIX,BODY g0b1 (2 tokens)
#  8    PARA_END    main
#  9    SERIAL      main
#  10   TITLE       main
#  11   PARA        main
#  12-13 PREFIX,BODY g1b0
#  14   PREFIX      g1b1
#  15-16 PREFIX,BODY g1b2
#  17   PARA_END    main
#  18   EOT         main


def example_spans() -> list[Span]:
    def s(kind, idxs, g=-1, b=-1):
        return Span(kind, [100 + i for i in idxs], g, b)

    return [
        s(Kind.PROMPT, [0]), s(Kind.TITLE, [1]), s(Kind.PARA, [2]),
        s(Kind.PREFIX, [3], 0, 0), s(Kind.BODY, [4, 5], 0, 0),
        s(Kind.PREFIX, [6], 0, 1), s(Kind.BODY, [7], 0, 1),
        s(Kind.PARA_END, [8]), s(Kind.SERIAL, [9]), s(Kind.TITLE, [10]), s(Kind.PARA, [11]),
        s(Kind.PREFIX, [12], 1, 0), s(Kind.BODY, [13], 1, 0),
        s(Kind.PREFIX, [14], 1, 1),
        s(Kind.PREFIX, [15], 1, 2), s(Kind.BODY, [16], 1, 2),
        s(Kind.PARA_END, [17]), s(Kind.EOT, [18]),
    ]


EXPECTED_INDEP = """
1
11
111
1111
11111
111111
1110001
11100011
111111111
1111111111
11111111111
111111111111
1111111111111
11111111111111
111111111111001
1111111111110001
11111111111100011
111111111111111111
1111111111111111111
"""


def grid(rows: str, n: int) -> torch.Tensor:
    lines = rows.split()
    return torch.tensor([[c == "1" for c in line.ljust(n, "0")] for line in lines])


def test_hand_checked_indep_mask_positions_labels():
    lay = build_layout(example_spans())
    assert lay.allowed().tolist() == grid(EXPECTED_INDEP, 19).tolist()
    assert lay.position_ids.tolist() == [0, 1, 2, 3, 4, 5, 3, 4, 8, 9, 10, 11, 12, 13, 12, 12, 13, 17, 18]
    engine_inserted = {0, 3, 6, 8, 12, 14, 15, 17}
    assert lay.labels.tolist() == [-100 if i in engine_inserted else 100 + i for i in range(19)]
    assert lay.groups == [[3, 2], [2, 1, 2]]
    assert lay.group.tolist() == [-1] * 3 + [0] * 5 + [-1] * 4 + [1] * 5 + [-1] * 2
    assert lay.branch.tolist() == [-1] * 3 + [0] * 3 + [1] * 2 + [-1] * 4 + [0, 0, 1, 2, 2] + [-1] * 2


def test_hand_checked_shared_mask_is_plain_causal():
    lay = build_layout(example_spans(), mask_mode="shared")
    assert lay.allowed().tolist() == torch.tril(torch.ones(19, 19, dtype=torch.bool)).tolist()


def test_position_modes():
    same_max = build_layout(example_spans(), pos_mode="same-max").position_ids.tolist()
    # g0 longest branch 3 -> main resumes at 3 + 3; g1 starts at 10, longest 2 -> main resumes at 12.
    assert same_max == [0, 1, 2, 3, 4, 5, 3, 4, 6, 7, 8, 9, 10, 11, 10, 10, 11, 12, 13]
    # same-re lays out like same-seq in training; the engine re-rotates keys when a group closes.
    same_re = build_layout(example_spans(), pos_mode="same-re").position_ids.tolist()
    assert same_re == build_layout(example_spans()).position_ids.tolist()
    pred = build_layout(
        example_spans(), pos_mode="predict", predicted_lengths=[[1, 1], [1, 1, 1]], predict_scale=2
    ).position_ids.tolist()
    # Ranges of 2 per branch; branch 0 of g0 overruns its range into branch 1's (PASTA's known conflict).
    assert pred == [0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18]


def test_sliding_window_limits_by_position():
    lay = build_layout(example_spans())
    a = lay.allowed(window=3)
    # Token 7 (g0b1 body, position 4) sees positions 2..4 only: main tokens 2 and its own 6, 7.
    assert a[7].nonzero().flatten().tolist() == [2, 6, 7]
    # The window counts positions, not cache slots: <|/para|> (position 17) reaches branch tokens only
    # within 6 positions of it, i.e. g1's branches (positions 12-13), not g0's.
    assert lay.allowed(window=6)[17].nonzero().flatten().tolist() == [12, 13, 14, 15, 16, 17]


def make_answer(body_a: str = "Gross pay is hours times rate.", t1: str = "Fuel") -> Document:
    return Document((
        Serial("Here are three tips:\n"),
        Group((Branch("Gross", body_a), Branch(t1, "Fuel cost is distance divided by efficiency."))),
        Serial("\nIn summary, habits matter."),
    ))


def test_chat_sample_labels_follow_token_roles():
    tok = tiny_tokenizer()
    ctrl = add_control_tokens(tok)
    spans = chat_spans(tok, ctrl, [{"role": "user", "content": "Give tips."}], make_answer())
    lay = build_layout(spans)
    assert tok.decode(lay.input_ids[: len(spans[0].ids)]).endswith("<|im_start|>assistant\n")
    prefix = branch_prefix_ids(tok, ctrl, "Fuel")
    ids = lay.input_ids.tolist()
    start = next(i for i in range(len(ids)) if ids[i : i + len(prefix)] == prefix)
    assert (lay.labels[start : start + len(prefix)] == -100).all()
    assert lay.labels[start + len(prefix)] == ids[start + len(prefix)]  # first body token is a target
    para_end = ids.index(ctrl.para_end)
    assert lay.labels[para_end] == -100 and lay.labels[para_end + 1] == ids[para_end + 1]
    assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>") and lay.labels[-1] == ids[-1]
    # Every label in the answer is either -100 or the token itself (the model shifts them).
    kept = lay.labels != -100
    assert (lay.labels[kept] == lay.input_ids[kept]).all()


def test_head_branch_spans_are_the_head_then_the_body_verbatim():
    tok = tiny_tokenizer()
    ctrl = add_control_tokens(tok)
    doc = Document((Group((Branch("1. **Diet**:", " Eat greens.  "), Branch("Sleep", "  Eight hours."))),))
    spans = chat_spans(tok, ctrl, [{"role": "user", "content": "Give tips."}], doc)
    kinds = [(s.kind, s.ids) for s in spans if s.kind in (Kind.TITLE, Kind.PREFIX, Kind.BODY)]
    assert kinds == [
        (Kind.TITLE, [ctrl.title, *text_ids(tok, "1. **Diet**:"), ctrl.title_end]),
        (Kind.TITLE, [ctrl.title, *text_ids(tok, "Sleep"), ctrl.title_end]),
        (Kind.PREFIX, [ctrl.branch, *text_ids(tok, "1. **Diet**:")]),  # a head: no ':' added
        (Kind.BODY, text_ids(tok, " Eat greens.")),  # kept verbatim after a head, right-trimmed
        (Kind.PREFIX, [ctrl.branch, *text_ids(tok, "Sleep:")]),
        (Kind.BODY, text_ids(tok, " Eight hours.")),  # after a label: one space, then the trimmed body
    ]


def branch_slice(lay, g: int, b: int) -> torch.Tensor:
    return ((lay.group == g) & (lay.branch == b)).nonzero().flatten()


@pytest.mark.parametrize("arch", ARCHS)
def test_mask_isolates_siblings_in_forward(arch):
    """Perturbing branch 1 leaves branch 2's logits unchanged under indep, and changes them under shared."""
    tok = tiny_tokenizer()
    ctrl = add_control_tokens(tok)
    model = tiny_model(arch, len(tok))
    msgs = [{"role": "user", "content": "Give tips."}]
    a = chat_spans(tok, ctrl, msgs, make_answer())
    b = chat_spans(tok, ctrl, msgs, make_answer(body_a="Rust and Go are programming languages."))
    for mode, same in (("indep", True), ("shared", False)):
        la, lb = build_layout(a, mask_mode=mode), build_layout(b, mask_mode=mode)
        ia, ib = branch_slice(la, 0, 1), branch_slice(lb, 0, 1)
        assert torch.equal(la.input_ids[ia], lb.input_ids[ib])
        with torch.no_grad():
            xa, xb = forward_layout(model, la)[ia], forward_layout(model, lb)[ib]
        diff = (xa - xb).abs().max().item()
        assert (diff < 1e-5) if same else (diff > 1e-3), (mode, diff)


@pytest.mark.parametrize("arch", ARCHS)
def test_serial_layout_forward_equals_plain_forward(arch):
    """With no groups the explicit 4D masks (sliding windows included) reproduce the model's own masking."""
    tok = tiny_tokenizer()
    ctrl = add_control_tokens(tok)
    model = tiny_model(arch, len(tok))
    spans = chat_spans(tok, ctrl, [{"role": "user", "content": "Give three tips for staying healthy."}],
                       "1. Eat a balanced diet. 2. Exercise regularly. 3. Sleep well.")
    lay = build_layout(spans)
    assert len(lay) > 2 * 8  # longer than the tiny Gemma 3 window
    with torch.no_grad():
        ref = model(input_ids=lay.input_ids[None]).logits[0]
        got = forward_layout(model, lay)
    assert (ref - got).abs().max().item() < 1e-4


def test_flash_attention_is_refused():
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(AttentionBackendError, match="sdpa"):
        check_backend(model)
