"""`aspd.attention.decode_attention`: the fast engine's attention on CUDA equals HF's SDPA attention."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from aspd.attention import DECODE_ATTENTION, decode_attention, mask_dtype, use_decode_attention
from aspd.testing import tiny_model, tiny_tokenizer


class Heads(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.eval()


@pytest.mark.parametrize("heads,kv_heads", [(6, 2), (4, 4), (8, 1)])
@pytest.mark.parametrize("rows", [1, 2, 5, 16, 64, 65])
@pytest.mark.parametrize("additive", [False, True])
def test_equals_sdpa_with_grouped_heads_and_branch_masks(heads, kv_heads, rows, additive):
    g = torch.Generator().manual_seed(rows * 31 + heads)
    q = torch.randn(2, heads, rows, 16, generator=g)
    k, v = (torch.randn(2, kv_heads, 40, 16, generator=g) for _ in range(2))
    allowed = torch.rand(2, 1, rows, 40, generator=g) < 0.4
    allowed[..., 0] = True  # every row sees something, as in the engine (padding rows read slot 0)
    mask = allowed if not additive else torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float).min)
    mod = Heads(heads // kv_heads)
    want, _ = sdpa_attention_forward(mod, q, k, v, mask, scaling=0.3)
    got, _ = decode_attention(mod, q, k, v, mask, scaling=0.3)
    assert got.shape == want.shape == (2, rows, heads, 16)
    assert (got - want).abs().max().item() < 1e-5
    # Not the same numbers by accident: a mask that lets every row see every key changes the output.
    other, _ = decode_attention(mod, q, k, v, torch.ones_like(allowed), scaling=0.3)
    assert (other - want).abs().max().item() > 1e-2


def test_a_model_switches_from_sdpa_only():
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    assert use_decode_attention(model) and model.config._attn_implementation == DECODE_ATTENTION
    assert mask_dtype(model) is None  # boolean masks, as SDPA takes them
    eager = tiny_model("llama", len(tok), attn="eager")
    assert not use_decode_attention(eager) and eager.config._attn_implementation == "eager"


@pytest.mark.parametrize("rows,keys,training,plain", [(1, 40, False, True), (2, 40, False, False),
                                                      (64, 40, False, False), (65, 40, False, True),
                                                      (16, 16384, False, False), (16, 16385, False, True),
                                                      (4, 40, True, True)])
def test_sdpa_takes_one_row_long_spans_and_training(monkeypatch, rows, keys, training, plain):
    import transformers.integrations.sdpa_attention as hf_sdpa

    calls = []
    real = hf_sdpa.sdpa_attention_forward
    monkeypatch.setattr(hf_sdpa, "sdpa_attention_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    mod = Heads(2)
    mod.train(training)
    q = torch.randn(1, 4, rows, 8)
    k, v = torch.randn(1, 2, keys, 8), torch.randn(1, 2, keys, 8)
    out, _ = decode_attention(mod, q, k, v, torch.ones(1, 1, rows, keys, dtype=torch.bool))
    assert bool(calls) == plain
    assert (out - real(mod, q, k, v, torch.ones(1, 1, rows, keys, dtype=torch.bool))[0]).abs().max() < 1e-5


def test_no_mask_keeps_sdpas_causal_rule():
    """HF's own generate on a switched model prefills with no mask and `is_causal`: the causal rule must hold."""
    q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    mod = Heads(2)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    want, _ = sdpa_attention_forward(mod, q, k, v, causal)
    got, _ = decode_attention(mod, q, k, v, None, is_causal=True)
    assert (got - want).abs().max() < 1e-5


def test_hf_generate_on_a_switched_model_is_unchanged():
    """The engine switches the user's model in place; HF's own `generate` on it (a 12-token prompt: a 2-64-row
    prefill) must give what it gave on SDPA."""
    tok = tiny_tokenizer()
    plain, switched = tiny_model("qwen2", len(tok)), tiny_model("qwen2", len(tok))
    assert use_decode_attention(switched)
    ids = torch.tensor([tok("Name three colours of the sky.")["input_ids"][:12]])
    assert ids.shape[1] == 12
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(plain.generate(ids, **kw), switched.generate(ids, **kw))
