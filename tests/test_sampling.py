"""The sampling math the engines share: candidates kept by top-k / top-p, the draw distribution, the penalty."""

import math

import torch

from aspd.engine.sampling import SamplingParams, apply_repetition_penalty, sample

PROBS = [0.05, 0.4, 0.1, 0.25, 0.05, 0.15]  # sorted: 1 (.4), 3 (.25), 5 (.15), 2 (.1), ...


def rows(n: int) -> torch.Tensor:
    return torch.tensor([math.log(p) for p in PROBS]).repeat(n, 1)


def test_top_k_then_top_p_draws_the_renormalised_nucleus():
    # As in HF: top-k 4 keeps 1, 3, 5, 2 and renormalises (.444, .278, .167, .111); top-p 0.7 then keeps 1 and 3
    # (the mass before token 5 is .722 > 0.7), drawn as .4 : .25.
    n = 20000
    sp = SamplingParams(temperature=1.0, top_k=4, top_p=0.7)
    got = sample(rows(n), sp, torch.Generator().manual_seed(0))
    freq = torch.bincount(got, minlength=len(PROBS)).float() / n
    want = torch.tensor([0, 0.4, 0, 0.25, 0, 0]) / 0.65
    assert (freq - want).abs().max() < 0.015, freq


def test_top_p_alone_and_per_row_generators_agree_on_the_support():
    sp = SamplingParams(temperature=1.0, top_p=0.5)  # 0.4 < 0.5 <= 0.65: tokens 1 and 3
    gens = [torch.Generator().manual_seed(i) for i in range(300)]
    got = set(sample(rows(300), sp, gens).tolist())
    assert got == {1, 3}
    again = sample(rows(300), sp, [torch.Generator().manual_seed(i) for i in range(300)])
    assert set(again.tolist()) == got and torch.equal(again, sample(rows(300), sp, [
        torch.Generator().manual_seed(i) for i in range(300)]))


def test_temperature_only_samples_the_whole_distribution():
    n = 20000
    got = sample(rows(n), SamplingParams(temperature=1.0), torch.Generator().manual_seed(1))
    freq = torch.bincount(got, minlength=len(PROBS)).float() / n
    assert (freq - torch.tensor(PROBS)).abs().max() < 0.015


def test_greedy_respects_bans_and_the_penalty_flips_the_choice():
    logits = torch.tensor([[2.0, 1.9, -1.0, 0.5]])
    sp = SamplingParams()
    assert sample(logits, sp).item() == 0
    assert sample(logits, sp, banned=torch.tensor([[True, False, False, False]])).item() == 1
    seen = torch.tensor([[True, False, True, False]])
    out = apply_repetition_penalty(logits, seen, 1.2)
    assert torch.allclose(out, torch.tensor([[2.0 / 1.2, 1.9, -1.2, 0.5]]))  # positive / p, negative * p
    assert sample(logits, SamplingParams(repetition_penalty=1.2), seen=seen).item() == 1
