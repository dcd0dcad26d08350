"""Serial-parallel layout: token roles, attention visibility and position ids (DESIGN.md section 3).

One set of rules serves two callers. Training lays a whole sample out at once (`build_layout`); the engine
feeds tokens step by step and asks the same `PositionPlanner` for positions and the same `visibility` for mask
rows. Cache order never matters: a token's `order` (when it was fed) plus its owner decide what it sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

import torch

MAIN = -1  # group/branch id of serial (main-stream) tokens


class MaskMode(StrEnum):
    INDEP = "indep"  # a branch never sees its siblings (the ASPD default)
    SHARED = "shared"  # siblings visible, causally in feed order (ablation)


class PosMode(StrEnum):
    SAME_SEQ = "same-seq"  # branches share positions; main resumes at the flattened count
    SAME_MAX = "same-max"  # main resumes after the longest branch
    SAME_RE = "same-re"  # shared while decoding; keys re-rotated end to end when the group closes
    PREDICT = "predict"  # PASTA-style pre-allocated range per branch from a predicted length


class Kind(IntEnum):
    PROMPT = 0  # chat-template prompt; never a target
    SERIAL = 1  # serial answer text
    TITLE = 2  # <|title|> title <|/title|>
    PARA = 3  # <|para|>
    PREFIX = 4  # <|branch|> + "Title:"; inserted by the engine
    BODY = 5  # branch body
    BRANCH_END = 6  # <|/branch|>
    PARA_END = 7  # <|/para|>; inserted by the engine
    EOT = 8  # end-of-turn token(s)


# Tokens the engine writes itself carry no loss (DESIGN.md section 2).
ENGINE_INSERTED = frozenset({Kind.PROMPT, Kind.PREFIX, Kind.PARA_END})
BRANCH_KINDS = frozenset({Kind.PREFIX, Kind.BODY, Kind.BRANCH_END})


@dataclass
class Span:
    """A run of token ids with one role. Branch spans name their (group, branch)."""

    kind: Kind
    ids: list[int]
    group: int = MAIN
    branch: int = MAIN


class PositionPlanner:
    """Hands out position ids for main tokens and branch groups, for training and decoding alike."""

    def __init__(self, mode: PosMode | str = PosMode.SAME_SEQ, *, start: int = 0, predict_scale: float = 10.0):
        self.mode = PosMode(mode)
        self.next_main = start
        self.predict_scale = predict_scale
        self._starts: list[int] = []

    def take_main(self, n: int = 1) -> list[int]:
        out = list(range(self.next_main, self.next_main + n))
        self.next_main += n
        return out

    def open_group(self, n_branches: int, predicted_lengths: Sequence[int] | None = None) -> list[int]:
        """Start position of each branch of a group that opens now."""
        base = self.next_main
        if self.mode is PosMode.PREDICT:
            if predicted_lengths is None or len(predicted_lengths) != n_branches:
                raise ValueError("position mode 'predict' needs one predicted length per branch")
            starts, off = [], 0
            for n in predicted_lengths:
                starts.append(base + off)
                off += max(1, int(round(n * self.predict_scale)))
            self._reserved = off
        else:
            starts = [base] * n_branches
        self._starts = starts
        return starts

    def close_group(self, lengths: Sequence[int]) -> None:
        """Advance the main stream past a group whose branches had these token counts."""
        if self.mode is PosMode.SAME_MAX:
            self.next_main += max(lengths)
        elif self.mode is PosMode.PREDICT:
            self.next_main += max(self._reserved, max(s - self.next_main + n for s, n in zip(self._starts, lengths, strict=True)))
        else:  # same-seq, same-re: main continues at the flattened count
            self.next_main += sum(lengths)

    def rearranged_starts(self, lengths: Sequence[int]) -> list[int]:
        """same-re: where each branch's tokens sit once the group is laid end to end."""
        base = self._starts[0]
        out, off = [], 0
        for n in lengths:
            out.append(base + off)
            off += n
        return out


def visibility(
    q_group: torch.Tensor,
    q_branch: torch.Tensor,
    q_order: torch.Tensor,
    k_group: torch.Tensor,
    k_branch: torch.Tensor,
    k_order: torch.Tensor,
    mode: MaskMode | str = MaskMode.INDEP,
    *,
    q_pos: torch.Tensor | None = None,
    k_pos: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Boolean [Q, K] matrix: may query token q attend to key token k.

    A token sees what was fed no later than itself, except a branch token never sees a sibling branch of its
    own group under `indep`. `window` (sliding-window layers) additionally limits the position distance.
    """
    allowed = k_order[None, :] <= q_order[:, None]
    if MaskMode(mode) is MaskMode.INDEP:
        qg, kg = q_group[:, None], k_group[None, :]
        sibling = (qg == kg) & (qg != MAIN) & (q_branch[:, None] != k_branch[None, :])
        allowed &= ~sibling
    if window is not None:
        if q_pos is None or k_pos is None:
            raise ValueError("a sliding window needs positions")
        allowed &= (q_pos[:, None] - k_pos[None, :]) < window
    return allowed


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """0 where allowed, the dtype's minimum elsewhere; eager attention needs additive masks."""
    out = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return out.masked_fill_(~allowed, torch.finfo(dtype).min)


@dataclass
class Layout:
    """A laid-out sample in feed order (for training, feed order = flattened order)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    group: torch.Tensor
    branch: torch.Tensor
    kinds: torch.Tensor
    mask_mode: MaskMode = MaskMode.INDEP
    pos_mode: PosMode = PosMode.SAME_SEQ
    groups: list[list[int]] = field(default_factory=list)  # token count of each branch, per group

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    def allowed(self, window: int | None = None) -> torch.Tensor:
        order = torch.arange(len(self))
        return visibility(
            self.group, self.branch, order, self.group, self.branch, order, self.mask_mode,
            q_pos=self.position_ids, k_pos=self.position_ids, window=window,
        )


def build_layout(
    spans: Sequence[Span],
    *,
    mask_mode: MaskMode | str = MaskMode.INDEP,
    pos_mode: PosMode | str = PosMode.SAME_SEQ,
    predicted_lengths: Sequence[Sequence[int]] | None = None,
    predict_scale: float = 10.0,
) -> Layout:
    """Lay out spans (in flattened order) into ids, labels, positions and owners.

    `predicted_lengths[g]` gives the per-branch length guess for group g under `predict`; by default the true
    branch lengths are used, as in training.
    """
    pos_mode = PosMode(pos_mode)
    planner = PositionPlanner(pos_mode, predict_scale=predict_scale)
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    groups: list[int] = []
    branches: list[int] = []
    kinds: list[int] = []
    group_lengths: list[list[int]] = []

    def emit(span: Span, pos: list[int]) -> None:
        ids.extend(span.ids)
        labels.extend([-100] * len(span.ids) if span.kind in ENGINE_INSERTED else span.ids)
        positions.extend(pos)
        groups.extend([span.group] * len(span.ids))
        branches.extend([span.branch] * len(span.ids))
        kinds.extend([int(span.kind)] * len(span.ids))

    i = 0
    while i < len(spans):
        span = spans[i]
        if span.kind not in BRANCH_KINDS:
            emit(span, planner.take_main(len(span.ids)))
            i += 1
            continue
        # A group: consecutive branch spans of one group id.
        g = span.group
        j = i
        while j < len(spans) and spans[j].kind in BRANCH_KINDS and spans[j].group == g:
            j += 1
        members = spans[i:j]
        n_br = max(s.branch for s in members) + 1
        lengths = [sum(len(s.ids) for s in members if s.branch == b) for b in range(n_br)]
        guess = predicted_lengths[len(group_lengths)] if predicted_lengths is not None else lengths
        starts = planner.open_group(n_br, guess if pos_mode is PosMode.PREDICT else None)
        offset = [0] * n_br
        for s in members:
            b = s.branch
            emit(s, list(range(starts[b] + offset[b], starts[b] + offset[b] + len(s.ids))))
            offset[b] += len(s.ids)
        planner.close_group(lengths)
        group_lengths.append(lengths)
        i = j

    t = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return Layout(
        input_ids=t(ids), labels=t(labels), position_ids=t(positions), group=t(groups), branch=t(branches),
        kinds=t(kinds), mask_mode=MaskMode(mask_mode), pos_mode=pos_mode, groups=group_lengths,
    )
