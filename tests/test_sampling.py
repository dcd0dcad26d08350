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


def test_many_draws_sampled_together_get_what_each_gets_alone():
    """sample_many groups draws that sample alike (one set of kernels); each still gets its own tokens: greedy
    ones with their bans and penalties, sampled ones with their own generators."""
    from aspd.engine.sampling import Pending, sample_many

    torch.manual_seed(0)
    vocab = 50
    hot = SamplingParams(temperature=0.9, top_k=10, top_p=0.9)
    hot_pen = SamplingParams(temperature=0.9, top_k=10, top_p=0.9, repetition_penalty=1.3)
    specs = [(SamplingParams(), False, True), (SamplingParams(), True, False), (hot, False, True), (hot, False, False),
             (hot_pen, True, True), (SamplingParams(temperature=0.5), False, False), (hot, True, True)]

    def gen(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    def draws():
        out = []
        for i, (sp, penal, ban) in enumerate(specs):
            n = 1 + i % 3
            logits = torch.randn(n, vocab, generator=gen(100 + i))
            seen = torch.rand(n, vocab, generator=gen(200 + i)) < 0.3 if penal else None
            banned = torch.rand(n, vocab, generator=gen(300 + i)) < 0.2 if ban else None
            gens = None if sp.greedy else (gen(i) if i % 2 else [gen(i * 10 + r) for r in range(n)])
            out.append(Pending(logits, sp, gens, seen, banned))
        return out

    alone = [sample(d.logits, d.params, d.generators, d.seen, d.banned) for d in draws()]
    together = sample_many(draws())
    assert [t.tolist() for t in together] == [a.tolist() for a in alone]
    assert [len(t) for t in together] == [1 + i % 3 for i in range(len(specs))]
    # Banned tokens are never drawn, sampled or not.
    for d, t in zip(draws(), together, strict=True):
        if d.banned is not None:
            assert not d.banned[torch.arange(len(t)), t].any()
