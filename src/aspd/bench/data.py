"""Benchmark question sets: MT-Bench-style JSONL, one question per line.

Shape (the files under ../shared/data/bench): {"question_id": 81, "category": "writing", "turns": ["...", "..."]}.
`turns` holds one user message per turn (MT-Bench has two; Vicuna and RAG one). A single `question` (or `prompt`)
string is accepted in place of `turns`; `question_id` defaults to the line number and `category` to "general".
Extra fields (e.g. MT-Bench's `reference`) are ignored. So a GSM8K-style file ({"question", "answer"} per line)
loads as is (one turn each, ids = line numbers); `aspd bench exact` scores its answers against the same file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aspd.jsonl import JsonlReader, iter_jsonl
from aspd.records import RecordError, question_turns

# --bench shortcuts -> file names inside the bench directory
BENCHES = {"vicuna": "vicuna_bench.jsonl", "mt": "mt_bench.jsonl", "rag": "rag_bench.jsonl"}
ENV_BENCH_DIR = "ASPD_BENCH_DIR"
# The FastChat-derived files (Apache-2.0; see its NOTICE) ship inside the package, so the shortcuts work from any
# directory. The RAG set does not: its licence allows academic use only.
SHIPPED_DIR = Path(__file__).with_name("shipped")
NOT_SHIPPED = {"rag": "its licence allows academic use only; get it from LLM-ASPD's infer/benchmarks/"}


class BenchDataError(ValueError):
    """A question set that cannot be found or read; the message names the file (and line)."""


@dataclass(frozen=True)
class Question:
    id: str
    category: str
    turns: tuple[str, ...]


def find_bench_dir(bench_dir: str | Path | None = None, cwd: str | Path | None = None) -> Path:
    """--bench-dir, else $ASPD_BENCH_DIR, else the first `shared/data/bench` in cwd or one of its parents, else
    the files shipped with the package (SHIPPED_DIR).

    The third rule finds `<repo>/../shared/data/bench` (which also holds the RAG set) from inside the repository.
    """
    given = bench_dir or os.environ.get(ENV_BENCH_DIR)
    if given:
        p = Path(given).expanduser()
        if not p.is_dir():
            raise BenchDataError(f"bench directory {str(p)!r} does not exist")
        return p
    start = Path(cwd or Path.cwd()).resolve()
    for base in (start, *start.parents):
        p = base / "shared" / "data" / "bench"
        if p.is_dir():
            return p
    return SHIPPED_DIR


def resolve_bench(bench: str, bench_dir: str | Path | None = None) -> Path:
    """A shortcut (vicuna | mt | rag) inside the bench directory, or a path to any JSONL of the same shape."""
    if bench in BENCHES:
        d = find_bench_dir(bench_dir)
        p = d / BENCHES[bench]
        if p.is_file():
            return p
        if d == SHIPPED_DIR and bench in NOT_SHIPPED:
            raise BenchDataError(f"--bench {bench}: {BENCHES[bench]} is not shipped with aspd ({NOT_SHIPPED[bench]}); "
                                 f"pass --bench-dir DIR (or set {ENV_BENCH_DIR}) to the folder that holds it")
        raise BenchDataError(f"--bench {bench}: no {BENCHES[bench]} in {d}")
    p = Path(bench).expanduser()
    if not p.is_file():
        raise BenchDataError(f"--bench {bench!r} is neither one of {sorted(BENCHES)} nor an existing file")
    return p


def parse_questions(lines: Iterable[str | bytes], source: str = "<questions>") -> list[Question]:
    """Questions from JSONL text; any problem raises BenchDataError naming `source:line`."""
    return _questions(JsonlReader(lines, name=source, error=BenchDataError))


def _questions(reader: JsonlReader) -> list[Question]:
    out: list[Question] = []
    seen: dict[str, int] = {}
    for n, obj in reader:
        where = f"{reader.name}:{n}"
        if not isinstance(obj, dict):
            raise BenchDataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        try:
            turns = question_turns(obj)
        except RecordError as e:
            raise BenchDataError(f"{where}: {e}") from None
        qid = str(obj.get("question_id", obj.get("id", n)))
        if qid in seen:
            raise BenchDataError(f"{where}: duplicate question_id {qid!r} (first on line {seen[qid]})")
        seen[qid] = n
        out.append(Question(qid, str(obj.get("category") or "general"), turns))
    if not out:
        raise BenchDataError(f"{reader.name}: no questions")
    return out


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) per line of a JSONL or JSONL.gz file; BenchDataError names the file (and line)."""
    return iter_jsonl(path, error=BenchDataError)


def load_questions(path: str | Path, *, limit: int | None = None, categories: Sequence[str] = ()) -> list[Question]:
    """Read a question file; `categories` keeps only those, then `limit` keeps the first N."""
    p = Path(path)
    qs = _questions(JsonlReader(p, error=BenchDataError))
    if categories:
        qs = [q for q in qs if q.category in categories]
        if not qs:
            raise BenchDataError(f"{p}: no question in categories {list(categories)}")
    return qs[:limit] if limit is not None else qs
