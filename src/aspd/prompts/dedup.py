"""Exact and near-duplicate removal over prompt texts, keeping the first occurrence in input order.

Exact: the case- and whitespace-insensitive text. Near: Jaccard similarity of character 5-gram shingle sets at
or above a threshold. Candidate pairs come from MinHash LSH (128 hash functions in 32 bands of 4 rows: a pair
at Jaccard 0.6 shares a band with probability 0.988, at 0.7 with 0.9998), and every candidate is checked on the
exact shingle sets, so MinHash never removes a prompt by itself (candidates whose signatures agree on
fewer than threshold - 0.15 of the hash functions are skipped unchecked: a 3.4-sd margin). numpy only: no new dependency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np

from aspd.prompts.text import exact_key, overlap, shingle_sets

NUM_PERM, ROWS = 128, 4
MIN_THRESHOLD = 0.6  # below this the banding above misses too many pairs
_BAND_MIX = np.array([0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93],
                     dtype=np.uint64)[:ROWS]
ESTIMATE_MARGIN = 0.15  # > 3.4 sd of the MinHash estimate at 128 hash functions


@dataclass(frozen=True)
class Removed:
    index: int  # position in the input
    kept: int  # position of the earlier text it duplicates
    kind: str  # "exact" | "near"
    score: float  # Jaccard of the shingle sets (1.0 for exact)


def minhash(sets: Sequence[np.ndarray], seed: int = 0) -> np.ndarray:
    """(len(sets), NUM_PERM) MinHash signatures (multiply-add hashing mod 2^64); an empty set gets zeros."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)
    sigs = np.zeros((len(sets), NUM_PERM), dtype=np.uint64)
    full = [i for i, s in enumerate(sets) if s.size]
    if not full:
        return sigs
    flat = np.concatenate([sets[i] for i in full])
    offsets = np.concatenate([[0], np.cumsum([sets[i].size for i in full])[:-1]])
    with np.errstate(over="ignore"):
        for k in range(NUM_PERM):  # one hash function at a time over all shingles of all texts
            sigs[full, k] = np.minimum.reduceat(a[k] * flat + b[k], offsets)
    return sigs


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = overlap(a, b)
    union = a.size + b.size - inter
    return inter / union if union else 1.0


def find_duplicates(texts: Sequence[str], threshold: float = 0.7, seed: int = 0) -> list[Removed]:
    """The texts to drop: each exact or near duplicate of an earlier kept text."""
    if not MIN_THRESHOLD <= threshold <= 1.0:
        raise ValueError(f"near-duplicate threshold must be in [{MIN_THRESHOLD}, 1], got {threshold}")
    removed: list[Removed] = []
    first: dict[str, int] = {}
    unique = []
    for i, text in enumerate(texts):
        key = exact_key(text)
        if key in first:
            removed.append(Removed(i, first[key], "exact", 1.0))
        else:
            first[key] = i
            unique.append(i)
    sets = dict(zip(unique, shingle_sets([texts[i] for i in unique]), strict=True))
    sigs = np.zeros((len(texts), NUM_PERM), dtype=np.uint64)
    sigs[unique] = minhash([sets[i] for i in unique], seed)
    with np.errstate(over="ignore"):  # one 64-bit key per band of ROWS signature values
        keys = (sigs.reshape(len(texts), -1, ROWS) * _BAND_MIX).sum(axis=2)
    buckets: dict[tuple[int, int], list[int]] = {}
    for i in unique:
        band_keys = list(enumerate(keys[i].tolist()))
        cand = np.unique(np.fromiter(chain.from_iterable(buckets.get(k, ()) for k in band_keys), dtype=np.int64))
        # Templated prompts share many bands; the signature agreement (an estimate of Jaccard, sd <= 0.045)
        # prunes them before the exact check. The margin keeps pairs just above the threshold.
        cand = cand[(sigs[cand] == sigs[i]).mean(axis=1) >= threshold - ESTIMATE_MARGIN]
        best = max(((jaccard(sets[i], sets[j]), -j) for j in cand.tolist()), default=(0.0, 0))
        if best[0] >= threshold:
            removed.append(Removed(i, -best[1], "near", round(best[0], 4)))
            continue
        for k in band_keys:
            buckets.setdefault(k, []).append(i)
    return sorted(removed, key=lambda d: d.index)
