"""PASTA acceptance filter: lockstep steps by hand, changed predictions on a tiny model, the verdict."""

import pytest
import torch
from test_pasta_layout import NESTED, TWO_PROMISES, hand_layout

from aspd.attention import forward_layout
from aspd.pasta.filter import changed_share, evaluate, lockstep_steps, plain_ids
from aspd.pasta.markup import parse
from aspd.pasta.tokens import add_pasta_tokens
from aspd.testing import tiny_model, tiny_tokenizer

LONG_SPANS = "<scope>A:<promise/><async> the lazy dog.</async> B:<promise/><async> the lazy dog.</async></scope>"


@pytest.mark.parametrize("markup, steps, content", [
    # <scope> 1, "A:" 2-3, <promise/> 4 | span 1: fox 5-6, </async> 7 | main: " B:" 5-6, <promise/> 7 |
    # span 2: " Eat" 8-9, </async> 10 | main: " ok" 8-9 | </scope> waits for step 10: 11.
    (TWO_PROMISES, 11, 10),
    # <scope> 1, "A:" 2-3, <promise/> 4 | span 1: <scope> 5, " B:" 6-7, <promise/> 8 | span 2: " Eat" 9-10,
    # </async> 11 | span 1: </scope> 12, </async> 13 | main: " ok" 5-6 | </scope> 14.
    (NESTED, 14, 8),
    # " the lazy dog." is 7 tokens: span 1 at 5-11, </async> 12; main " B:" 5-6, <promise/> 7; span 2 at
    # 8-14, </async> 15; </scope> 16. Serially: 2 + 7 + 2 + 7 = 18 tokens.
    (LONG_SPANS, 16, 18),
])
def test_lockstep_steps_by_hand(markup, steps, content):
    lay, _, _ = hand_layout(markup, [1, 2])
    assert lockstep_steps(lay) == steps
    assert len(plain_ids(lay)[0]) - 2 == content


def test_serial_answer_takes_one_step_per_token():
    lay, _, _ = hand_layout("plain answer, no tags", [1, 2])
    assert lockstep_steps(lay) == len(plain_ids(lay)[0]) - 2


@pytest.fixture(scope="module")
def tiny(one_thread):
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    return model, tok, add_pasta_tokens(tok, model)


MSGS = [{"role": "user", "content": "Give two tips."}]


def test_no_tags_changes_no_prediction(tiny):
    model, tok, ids = tiny
    r = evaluate(model, tok, ids, MSGS, parse("1. Eat a balanced diet. 2. Sleep well. In summary, habits matter."))
    assert r.changed == 0.0 and r.tokens > 10
    assert r.gain == 0.0 and r.steps_pasta == r.steps_serial and not r.accepted
    r0 = evaluate(model, tok, ids, MSGS, parse("Eat a balanced diet."), min_gain=0.0)
    assert r0.accepted


def test_changed_share_compares_stream_predecessor_with_serial_predecessor(tiny):
    model, tok, _ = tiny
    lay, _, _ = hand_layout(TWO_PROMISES, [1, 2])
    share, n = changed_share(model, lay)
    # Content slots 3,4 | 7,8 | 10,11 | 14,15 | 17,18, predicted in their stream from these slots; serially
    # they are plain tokens 2..11, predicted from 1..10.
    by_stream = [2, 3, 6, 7, 5, 10, 13, 14, 12, 17]
    ids, _ = plain_ids(lay)
    with torch.no_grad():
        pasta = forward_layout(model, lay).argmax(-1)[by_stream]
        serial = model(input_ids=torch.tensor([ids])).logits[0].argmax(-1)[1:11]
    assert n == 10 and share == pytest.approx(float((pasta != serial).float().mean()))
    assert 0.0 < share <= 1.0  # tags and hidden spans do move a random model's predictions


def test_verdict_needs_both_figures(tiny):
    model, tok, ids = tiny
    doc = parse("Here:<scope>\n1. Diet:<promise/><async> Eat a balanced diet, the quick brown fox.</async>\n"
                "2. Sleep:<promise/><async> Sleep well. The quick brown fox jumps over the lazy dog.</async>\n"
                "</scope>")
    r = evaluate(model, tok, ids, MSGS, doc, max_changed=1.01, min_gain=0.0)
    assert r.gain > 0.2 and r.accepted
    assert not evaluate(model, tok, ids, MSGS, doc, max_changed=1.01, min_gain=r.gain + 0.01).accepted
    assert not evaluate(model, tok, ids, MSGS, doc, max_changed=r.changed, min_gain=0.0).accepted
