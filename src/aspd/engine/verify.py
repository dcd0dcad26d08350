"""Checks that the engine decodes a given model exactly: used by the tests, and on GPUs by scripts/gpu/.

Each check returns a dict with `ok` and the figures behind it, so a run on any machine leaves evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from aspd.attention import forward_layout
from aspd.engine.core import HybridEngine, Limits
from aspd.layout import Layout
from aspd.tokens import text_ids


def hf_greedy(model: Any, ids: list[int], n: int, eos: Sequence[int] | None = None) -> list[int]:
    """Plain Hugging Face greedy decoding, every logits processor off."""
    from transformers import GenerationConfig

    cfg = GenerationConfig(do_sample=False, max_new_tokens=n, eos_token_id=list(eos) if eos else None,
                           pad_token_id=0, repetition_penalty=1.0)
    with torch.no_grad():
        inp = torch.tensor([ids], device=model.device)
        return model.generate(inp, attention_mask=torch.ones_like(inp), generation_config=cfg)[0, len(ids):].tolist()


def forced_group(engine: HybridEngine, titles: Sequence[str], lead: str = "") -> list[int]:
    """Answer-prefix ids that announce `titles` and open a group (for models not fine-tuned yet)."""
    c, tok = engine.ctrl, engine.tokenizer
    ids = text_ids(tok, lead) if lead else []
    for t in titles:
        ids += [c.title, *text_ids(tok, t), c.title_end]
    return [*ids, c.para]


def check_serial_equals_generate(engine: HybridEngine, prompt: str, n: int = 32) -> dict[str, Any]:
    g = engine.generate(prompt, mode="serial", limits=Limits(max_new_tokens=n))
    ref = hf_greedy(engine.model, engine.prompt_ids(prompt), n, eos=sorted(engine.eot))
    first_diff = next((i for i, (a, b) in enumerate(zip(g.answer_ids, ref, strict=False)) if a != b), None)
    return {"ok": g.answer_ids == ref, "tokens": len(ref), "first_difference": first_diff, "text": g.text}


def check_isolation(engine: HybridEngine, prompt: str, titles: Sequence[str], cap: int = 12,
                    lead: str = "") -> dict[str, Any]:
    """Greedy branch i == plain greedy decode of (everything up to <|para|>) + <|branch|>T_i:."""
    c = engine.ctrl
    g = engine.generate(prompt, answer_prefix=forced_group(engine, titles, lead),
                        limits=Limits(max_new_tokens=len(titles) * cap + 64, max_branch_tokens=cap), record=True)
    para = g.answer_ids.index(c.para)
    context = engine.prompt_ids(prompt) + g.answer_ids[: para + 1]
    results = []
    for b, title in enumerate(titles):
        prefix = [c.branch, *text_ids(engine.tokenizer, f"{title}:")]
        body = [t for t, _p, gr, br in g.slots if gr == 0 and br == b][len(prefix) : -1]
        ref = hf_greedy(engine.model, context + prefix, len(body) + 1)
        ok = ref[: len(body)] == body
        if len(prefix) + len(body) + 1 < cap:  # ended by itself: the serial decode ends the turn there too
            ok = ok and ref[len(body)] in engine.eot
        results.append({"title": title, "tokens": len(body), "ok": ok})
    return {"ok": all(r["ok"] for r in results), "branches": results, "generation": g}


def check_consistency(engine: HybridEngine, generation: Any) -> dict[str, Any]:
    """Every recorded slot's logits == one forward over all slots with the layout's mask and positions."""
    ids, pos, grp, br = (torch.tensor(x) for x in zip(*generation.slots, strict=True))
    lay = Layout(input_ids=ids, labels=ids, position_ids=pos, group=grp, branch=br, kinds=torch.zeros_like(ids),
                 mask_mode=engine.mask_mode, pos_mode=engine.pos_mode)
    with torch.no_grad():
        ref = forward_layout(engine.model, lay).float().cpu()
    diff = (ref - torch.stack(generation.logits)).abs().max().item()
    return {"max_abs_diff": diff, "slots": len(generation.slots)}


def check_engines_agree(a: HybridEngine, b: HybridEngine, prompt: str, *, mode: str = "hybrid",
                        limits: Limits | None = None, answer_prefix: Sequence[int] = ()) -> dict[str, Any]:
    """Two engines on one model (eager vs fast): the same greedy tokens, and their logits on the slots both fed.
    answer_prefix: forced ids (e.g. `forced_group`, so that a model never fine-tuned decodes a group)."""
    ga = a.generate(prompt, mode=mode, limits=limits, record=True, answer_prefix=answer_prefix)
    gb = b.generate(prompt, mode=mode, limits=limits, record=True, answer_prefix=answer_prefix)
    first = next((i for i, (x, y) in enumerate(zip(ga.answer_ids, gb.answer_ids, strict=False)) if x != y), None)
    shared = next((i for i, (x, y) in enumerate(zip(ga.slots, gb.slots, strict=False)) if x != y),
                  min(len(ga.slots), len(gb.slots)))
    # Modes that record no logits (SoT's outline and point calls) are compared on their tokens alone.
    diff = ((torch.stack(ga.logits[:shared]) - torch.stack(gb.logits[:shared])).abs().max().item()
            if shared and ga.logits and gb.logits else None)
    return {"ok": ga.answer_ids == gb.answer_ids, "tokens": len(ga.answer_ids), "first_difference": first,
            "max_abs_logit_diff": diff, "groups": [ga.stats.groups, gb.stats.groups]}
