"""Text keys shared by dedup and decontamination: normalized text, character n-gram shingles, JSONL files."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from aspd.cli import CLIError
from aspd.jsonl import JsonlReader

SHINGLE = 5  # character 5-grams, the rule the shared prompt file was decontaminated with

_NON_WORD = re.compile(r"[\W_]+")
_SPACE = re.compile(r"\s+")


def exact_key(text: str) -> str:
    """Case- and whitespace-insensitive identity of a text."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def shingle_text(text: str) -> str:
    """What shingles are taken over: case-folded, punctuation and runs of spaces collapsed to one space."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


_MIX1, _MIX2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_BASE = np.uint64(0x100000001B3)


def _mix(h: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finalizer: spreads a polynomial hash over all bits (in place, wrapping)."""
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(33)
        h *= _MIX1
        h ^= h >> np.uint64(33)
        h *= _MIX2
        h ^= h >> np.uint64(33)
    return h


def shingle_sets(texts: Sequence[str], n: int = SHINGLE) -> list[np.ndarray]:
    """Per text, the sorted unique 64-bit hashes of the character n-grams of `shingle_text(text)`.

    A text shorter than n is one shingle; an empty one has none. Hashes stand in for the n-grams: a collision
    among a few million 64-bit values is vanishingly unlikely, so set sizes and intersections stay exact in
    practice. All texts are hashed in one pass over their concatenation (windows that cross a border dropped).
    """
    if not texts:
        return []
    norm = [shingle_text(t) for t in texts]
    lengths = np.array([len(t) for t in norm], dtype=np.int64)
    codes = np.frombuffer("".join(norm).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    width = max(codes.size - n + 1, 0)
    h = np.zeros(width, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * _BASE + codes[k : k + width]
    counts = np.maximum(lengths - n + 1, 0)  # full windows inside each text
    window_doc = np.repeat(np.arange(len(norm)), counts)
    window_pos = np.repeat(starts, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    doc, hashes = window_doc, _mix(h[window_pos])
    short = np.flatnonzero((lengths > 0) & (lengths < n))
    if short.size:  # the whole text is its one shingle
        extra = np.zeros(short.size, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for r, d in enumerate(short.tolist()):
                for c in codes[starts[d] : starts[d] + lengths[d]]:
                    extra[r] = extra[r] * _BASE + c
        doc, hashes = np.concatenate([doc, short]), np.concatenate([hashes, _mix(extra)])
    order = np.lexsort((hashes, doc))
    doc, hashes = doc[order], hashes[order]
    first = np.ones(doc.size, dtype=bool)
    first[1:] = (doc[1:] != doc[:-1]) | (hashes[1:] != hashes[:-1])
    doc, hashes = doc[first], hashes[first]
    return np.split(hashes, np.searchsorted(doc, np.arange(1, len(norm))))


def shingles(text: str, n: int = SHINGLE) -> np.ndarray:
    """The shingle set of one text (see `shingle_sets`)."""
    return shingle_sets([text], n)[0]


def overlap(a: np.ndarray, b: np.ndarray) -> int:
    """Size of the intersection of two sorted unique shingle arrays."""
    return int(np.intersect1d(a, b, assume_unique=True).size)


# ------------------------------------------------------------------------------------------------ files


@contextmanager
def _write(path: str | Path) -> Iterator[IO[str]]:
    if not str(path).endswith(".gz"):
        with open(path, "w", encoding="utf-8") as f:
            yield f
    else:  # no name or time in the gzip header: the same rows give the same bytes
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                io.TextIOWrapper(gz, encoding="utf-8") as f:
            yield f


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line of a JSONL file (.gz too); problems name file:line."""
    reader = JsonlReader(path, error=CLIError)
    out = []
    for n, obj in reader:
        if not isinstance(obj, dict):
            reader.bad(n, f"expected a JSON object, got {type(obj).__name__}")
        out.append((n, obj))
    return out


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows whole or not at all (temp file + rename); .gz paths are gzipped. Returns the row count."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp" + (".gz" if p.name.endswith(".gz") else ""))
    n = 0
    with _write(tmp) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, p)
    return n


def write_json(path: str | Path, obj: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
