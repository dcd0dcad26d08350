"""PASTA training layout: hand-checked rows, positions and labels; one-shot forward == step-by-step cache."""

import pytest
import torch

from aspd.attention import forward_layout, layer_windows, mask_dtype, model_mask
from aspd.engine.kv import cache_kwargs
from aspd.pasta.layout import PastaKind, PastaSpan, answer_spans, build_pasta_layout, layout_spans
from aspd.pasta.markup import parse
from aspd.pasta.tokens import add_pasta_tokens
from aspd.testing import ARCHS, tiny_model, tiny_tokenizer
from aspd.tokens import add_control_tokens, text_ids

# Tiny-tokenizer pieces: "A:" -> A : , " fox" -> ' f' 'ox', " B:" -> ' B' ':', " Eat" -> ' E' 'at', " ok" -> ' o' 'k'
TWO_PROMISES = "<scope>A:<promise/><async> fox</async> B:<promise/><async> Eat</async> ok</scope>"
#  slot  token      stream  pos
#  0,1   prompt     main    0,1
#  2     <scope>    main    2
#  3,4   A :        main    3,4
#  5     <promise/> main    5   -> fork 1
#  6     <async>    1       6   (sees 0-5 and itself)
#  7,8   ' f' 'ox'  1       7,8
#  9     </async>   1       9
#  10,11 ' B' ':'   main    6,7 (sees 0-5 only: the span is not its prefix)
#  12    <promise/> main    8   -> fork 2
#  13    <async>    2       9   (sees 0-5, 10-12)
#  14,15 ' E' 'at'  2       10,11
#  16    </async>   2       12
#  17,18 ' o' 'k'   main    9,10
#  19    </scope>   main    19  (joins: sees all 19 earlier slots)
#  20    EOT        main    20
TWO_PROMISES_ROWS = """
1
11
111
1111
11111
111111
1111111
11111111
111111111
1111111111
11111100001
111111000011
1111110000111
11111100001111
111111000011111
1111110000111111
11111100001111111
111111000011100001
1111110000111000011
11111111111111111111
111111111111111111111
"""
TWO_PROMISES_POS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 6, 7, 8, 9, 10, 11, 12, 9, 10, 19, 20]

NESTED = "<scope>A:<promise/><async><scope> B:<promise/><async> Eat</async></scope></async> ok</scope>"
#  0 prompt | 1 <scope> | 2,3 A : | 4 <promise/> -> fork 1 | 5 <async> | 6 <scope> | 7,8 ' B' ':' |
#  9 <promise/> -> fork 2 | 10 <async> | 11,12 ' E' 'at' | 13 </async> | 14 </scope> (fork 1 joins fork 2) |
#  15 </async> | 16,17 ' o' 'k' (main: sees 0-4) | 18 </scope> | 19 EOT
NESTED_ROWS = "\n".join(["1" * (i + 1) for i in range(16)] + [
    "11111000000000001",
    "111110000000000011",
    "1" * 19,
    "1" * 20,
])
NESTED_POS = [*range(16), 5, 6, 18, 19]


def grid(rows: str, n: int) -> list[list[bool]]:
    return [[c == "1" for c in line.ljust(n, "0")] for line in rows.split()]


def hand_layout(markup: str, prompt: list[int], promise_len: int = 1):
    tok = tiny_tokenizer()
    ids = add_pasta_tokens(tok)
    spans = [PastaSpan(PastaKind.PROMPT, prompt), *answer_spans(tok, ids, parse(markup)),
             PastaSpan(PastaKind.EOT, [tok.eos_token_id])]
    return layout_spans(spans, promise_len=promise_len), ids, tok


def test_hand_checked_two_promises():
    lay, ids, tok = hand_layout(TWO_PROMISES, [1, 2])
    x = lay.input_ids.tolist()
    assert len(lay) == 21 and [x[i] for i in (2, 5, 6, 9, 12, 13, 16, 19)] == [
        ids.scope, ids.promise, ids.async_, ids.async_end, ids.promise, ids.async_, ids.async_end, ids.scope_end]
    assert x[3:5] == text_ids(tok, "A:") and x[17:19] == text_ids(tok, " ok")
    assert lay.allowed().tolist() == grid(TWO_PROMISES_ROWS, 21)
    assert lay.position_ids.tolist() == TWO_PROMISES_POS
    assert lay.streams.tolist() == [0] * 6 + [1] * 4 + [0] * 3 + [2] * 4 + [0] * 4
    # Each token is the target of the slot before it in its own stream: ' B' (10) of the <promise/> (5), the
    # text after the second span (17) of the second <promise/> (12); nothing is predicted from a </async>
    # (9, 16), and <async> (6, 13) and the prompt are never targets.
    want = [-100, -100, *x[2:6], x[10], *x[7:10], -100, *x[11:13], x[17], *x[14:17], -100, *x[18:21]]
    assert lay.labels.tolist() == want


def test_hand_checked_nested_scope():
    lay, ids, _ = hand_layout(NESTED, [1])
    assert len(lay) == 20
    assert lay.allowed().tolist() == grid(NESTED_ROWS, 20)
    assert lay.position_ids.tolist() == NESTED_POS
    assert lay.streams.tolist() == [0] * 5 + [1] * 5 + [2] * 4 + [1] * 2 + [0] * 4
    assert lay.labels[16].item() == -100 and lay.labels[5].item() == lay.input_ids[16].item()


def test_promise_len_reserves_positions():
    lay, _, _ = hand_layout(TWO_PROMISES, [1, 2], promise_len=3)
    # Each promise reserves 3 positions for its span: the main stream goes on 2 further than with 1.
    assert lay.position_ids.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 8, 9, 10, 11, 12, 13, 14, 13, 14, 19, 20]
    assert lay.allowed().tolist() == grid(TWO_PROMISES_ROWS, 21)  # visibility does not depend on it


def test_window_limits_rows_by_position():
    lay, _, _ = hand_layout(TWO_PROMISES, [1, 2])
    win = lay.allowed(4)
    pos = lay.position_ids
    assert win.tolist() == (lay.allowed() & ((pos[:, None] - pos[None, :]) < 4)).tolist()
    assert win[17].nonzero().flatten().tolist() == [10, 11, 12, 17]  # positions 6-9 only
    assert win.diagonal().all()


def test_without_tags_it_is_the_plain_chat_sample():
    from aspd.layout import build_layout
    from aspd.sample import chat_spans

    tok = tiny_tokenizer()
    ctrl = add_control_tokens(tok)
    ids = add_pasta_tokens(tok)
    msgs = [{"role": "user", "content": "Give tips."}]
    lay = build_pasta_layout(tok, ids, msgs, parse("Eat well. Sleep well."))
    ref = build_layout(chat_spans(tok, ctrl, msgs, "Eat well. Sleep well."))
    assert torch.equal(lay.input_ids, ref.input_ids) and torch.equal(lay.labels, ref.labels)
    assert torch.equal(lay.position_ids, ref.position_ids) and torch.equal(lay.allowed(), ref.allowed())


def stepwise_logits(model, lay) -> torch.Tensor:
    """Feed slot by slot through a DynamicCache in text order, as the engine does: a fresh tracker gives each
    token's row (right after feeding it) and position; sliding windows cut by position."""
    from transformers import DynamicCache

    from aspd.pasta.sync import SyncTracker

    cache, tracker = DynamicCache(), SyncTracker(lay.promise_len)
    windows, dtype = layer_windows(model.config), mask_dtype(model)
    positions: list[int] = []
    out = []
    with torch.no_grad():
        for i, (stream, tag) in enumerate(lay.feeds()):
            fed = tracker.feed(stream, tag)
            positions.append(fed.position)
            row = torch.from_numpy(tracker.row(stream))[None]
            dist = fed.position - torch.tensor(positions)

            def allowed(w, row=row, dist=dist):
                return row if w is None else row & (dist < w)[None]

            step = model(input_ids=lay.input_ids[None, i : i + 1], position_ids=torch.tensor([[fed.position]]),
                         attention_mask=model_mask(windows, allowed, dtype), **cache_kwargs(model, cache))
            out.append(step.logits[0, -1])
    assert positions == lay.position_ids.tolist()
    return torch.stack(out)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_one_shot_forward_equals_step_by_step(arch, attn, one_thread):
    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok), attn=attn)
    ids = add_pasta_tokens(tok, model)
    doc = parse("Tips:<scope>\n1. Diet:<promise/><async> Eat<scope> well:<promise/><async> fox</async></scope>"
                "</async>\n2. Sleep:<promise/><async> quick brown fox.</async>\n</scope> ok")
    lay = build_pasta_layout(tok, ids, [{"role": "user", "content": "Give tips."}], doc, promise_len=2)
    assert len(lay) > 3 * 8  # well past the tiny Gemma 3 window
    with torch.no_grad():
        ref = forward_layout(model, lay)
    got = stepwise_logits(model, lay)
    assert (ref - got).abs().max().item() < 1e-4
    # Not trivially equal: a span's tokens change nothing the main stream computes before the join.
    assert lay.allowed().sum() < len(lay) * (len(lay) + 1) // 2


def test_span_content_is_invisible_to_the_main_stream_until_the_join(one_thread):
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    ids = add_pasta_tokens(tok, model)
    msgs = [{"role": "user", "content": "Give tips."}]

    def run(span: str):
        doc = parse(f"<scope>1. Diet:<promise/><async>{span}</async>\n2. Sleep:<promise/><async> well.</async>"
                    "</scope> In summary, habits.")
        lay = build_pasta_layout(tok, ids, msgs, doc)
        with torch.no_grad():
            return lay, forward_layout(model, lay)

    la, xa = run(" Eat a balanced diet.")
    lb, xb = run(" Paris is the capital of France.")
    end = la.input_ids.tolist().index(ids.scope_end)
    # The main stream and the second span, everything before the join, in both samples.
    a_rows = [i for i in range(end) if la.streams[i] != 1]
    b_rows = [i for i in range(lb.input_ids.tolist().index(ids.scope_end)) if lb.streams[i] != 1]
    assert torch.equal(la.input_ids[a_rows], lb.input_ids[b_rows])
    assert torch.equal(la.position_ids[a_rows], lb.position_ids[b_rows])
    assert (xa[a_rows] - xb[b_rows]).abs().max().item() < 1e-5
    assert (xa[-1] - xb[-1]).abs().max().item() > 1e-3  # after </scope> the span's content counts
