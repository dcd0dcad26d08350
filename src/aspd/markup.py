"""Parallel markup: `<branchgroup><branch title="...">...</branch></branchgroup>` (DESIGN.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Serial:
    text: str


@dataclass(frozen=True)
class Branch:
    title: str
    text: str


@dataclass(frozen=True)
class Group:
    branches: tuple[Branch, ...]


Segment = Serial | Group


@dataclass(frozen=True)
class Document:
    segments: tuple[Segment, ...]

    @property
    def groups(self) -> list[Group]:
        return [s for s in self.segments if isinstance(s, Group)]
