"""Control tokens: added once, embeddings grown, new rows at the mean, tied and untied heads both handled."""

import pytest
import torch

from aspd.testing import tiny_model, tiny_tokenizer
from aspd.tokens import DEFAULT_TOKENS, ControlIds, add_control_tokens, branch_prefix_ids


@pytest.mark.parametrize("tie", [True, False])
def test_add_control_tokens_grows_model_and_inits_rows_at_mean(tie):
    tok = tiny_tokenizer()
    n = len(tok)
    model = tiny_model("qwen2", n, tie=tie)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    ctrl = add_control_tokens(tok, model)
    assert len(tok) == n + 6 and list(ctrl.all()) == list(range(n, n + 6))
    w_in = model.get_input_embeddings().weight
    w_out = model.get_output_embeddings().weight
    assert w_in.shape[0] == n + 6 and w_out.shape[0] == n + 6
    assert torch.equal(w_in[:n], old_in)
    assert torch.allclose(w_in[n:], old_in.mean(0).expand(6, -1))
    if tie:
        assert w_out.data_ptr() == w_in.data_ptr()
    else:
        assert torch.allclose(w_out[n:], old_out.mean(0).expand(6, -1))
        assert torch.equal(w_out[:n], old_out)
    # Idempotent: a second call changes nothing.
    again = add_control_tokens(tok, model)
    assert again == ctrl and len(tok) == n + 6


def test_spare_embedding_rows_are_used_without_resizing():
    """Like Qwen's padded vocabularies: rows exist beyond the tokenizer, and they still get the mean init."""
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok) + 10)
    ctrl = add_control_tokens(tok, model)
    w = model.get_input_embeddings().weight
    assert w.shape[0] == len(tok) + 4
    assert torch.allclose(w[ctrl.para], w[: ctrl.title].mean(0))


def test_control_ids_and_prefix():
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="add_control_tokens"):
        ControlIds.from_tokenizer(tok)
    ctrl = add_control_tokens(tok)
    assert tok.convert_ids_to_tokens(list(ctrl.all())) == list(DEFAULT_TOKENS.all())
    ids = branch_prefix_ids(tok, ctrl, " Fuel cost ")
    assert ids[0] == ctrl.branch and tok.decode(ids[1:]) == "Fuel cost:"
    # Each control token is one id however it is surrounded.
    assert tok("a<|para|>b", add_special_tokens=False)["input_ids"].count(ctrl.para) == 1
