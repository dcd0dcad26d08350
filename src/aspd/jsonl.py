"""JSONL files, read one way everywhere: one JSON value per line, errors that name `file:line`.

Blank lines are skipped, a UTF-8 byte-order mark is accepted, and a gzip file (told by its magic bytes, so
`.jsonl.gz` or not) is read as if it were plain. A line that is not UTF-8 or not JSON is an error naming the
file and line, or, with `skip_bad_lines`, reported and skipped. Files a run appends to (`read_appended`) may
end in a line torn by a kill: that one is dropped, and on request cut off the file. Record ids are checked
by `RecordIds`.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["JsonlError", "JsonlReader", "RecordIds", "iter_jsonl", "line_id", "read_appended", "record_id"]

GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"

Report = Callable[[str], None]
ErrorType = Callable[[str], Exception]


class JsonlError(ValueError):
    """A JSONL file that cannot be used; the message names the file, and the line when there is one."""


def warn(message: str) -> None:
    print(f"aspd: {message}", file=sys.stderr, flush=True)


def is_gzip(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def decode_line(raw: bytes | str, *, first: bool = False) -> Any:
    """One line's JSON value; ValueError saying what is wrong (not UTF-8, not JSON). A first line may start
    with a BOM."""
    if isinstance(raw, bytes):
        if first and raw.startswith(BOM):
            raw = raw[len(BOM):]
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1}); "
                             "save the file as UTF-8") from None
    elif first:
        raw = raw.removeprefix("\ufeff")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None


class JsonlReader:
    """(line number, value) for each non-blank line of a JSONL file (or of given lines, named `name`).

    A line that cannot be decoded raises `error("file:line: ...")`, or with `skip_bad_lines` is reported and
    counted; callers send their own per-line problems through `bad()` to get the same policy. A file that
    cannot be opened, or a broken gzip stream, is always an error.
    """

    def __init__(self, source: str | Path | Iterable[bytes | str], *, name: str | None = None,
                 skip_bad_lines: bool = False, report: Report = warn, error: ErrorType = JsonlError):
        self.source = source
        self.name = str(source) if isinstance(source, str | Path) else (name or "<lines>")
        self.skip_bad_lines = skip_bad_lines
        self.report = report
        self.error = error
        self.lines = 0  # non-blank lines seen
        self.skipped = 0  # lines skipped as bad (by the reader or through `bad()`)

    def bad(self, lineno: int, problem: str) -> None:
        """A line that cannot be used: raise naming file:line, or (skip_bad_lines) report and count it."""
        message = f"{self.name}:{lineno}: {problem}"
        if not self.skip_bad_lines:
            raise self.error(message)
        self.skipped += 1
        self.report(f"skipping {message}")

    def empty(self) -> Exception:
        """The error for a file that left the caller nothing: the same words from every command."""
        if not self.lines:
            return self.error(f"{self.name}: no records (the file is empty)")
        return self.error(f"{self.name}: no usable records (all {self.lines} line(s) are bad)")

    def _open(self) -> IO[bytes]:
        assert isinstance(self.source, str | Path)
        try:
            return gzip.open(self.source, "rb") if is_gzip(self.source) else open(self.source, "rb")
        except OSError as e:
            raise self.error(f"cannot read {self.name}: {e.strerror or e}") from None

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        if not isinstance(self.source, str | Path):
            yield from self._decode(self.source)
        else:
            with self._open() as f:
                yield from self._decode(f)
        if self.skipped:
            self.report(f"{self.name}: skipped {self.skipped} bad line(s)")

    def _decode(self, lines: Iterable[bytes | str]) -> Iterator[tuple[int, Any]]:
        lineno = 0
        it = iter(lines)
        while True:
            try:
                raw = next(it, None)
            except (OSError, EOFError, zlib.error) as e:  # a corrupt or truncated gzip stream
                raise self.error(f"{self.name}:{lineno + 1}: unreadable from here on ({e})") from None
            if raw is None:
                return
            lineno += 1
            if not raw.strip() or (lineno == 1 and raw.strip() in (BOM, "\ufeff")):
                continue
            self.lines += 1
            try:
                value = decode_line(raw, first=lineno == 1)
            except ValueError as e:
                self.bad(lineno, str(e))
                continue
            yield lineno, value


def iter_jsonl(path: str | Path, *, skip_bad_lines: bool = False, report: Report = warn,
               error: ErrorType = JsonlError) -> Iterator[tuple[int, Any]]:
    """(line number, value) per non-blank line of a JSONL or JSONL.gz file; see `JsonlReader`."""
    return iter(JsonlReader(path, skip_bad_lines=skip_bad_lines, report=report, error=error))


def read_appended(path: str | Path, *, repair: bool = False, report: Report = warn,
                  error: ErrorType = JsonlError) -> list[tuple[int, Any]]:
    """The lines of a file a run appends to, one write per line. A killed run leaves at most one torn last
    line: that is dropped and reported, and with `repair` cut off the file (and a whole last line missing its
    newline gets one), so that appends start on a fresh line. A bad line anywhere else is an error. A file
    that does not exist has no lines."""
    p = Path(path)
    if not p.exists():
        return []
    try:
        if is_gzip(p):
            if repair:
                raise error(f"{path} is gzip-compressed: a run cannot append to it; decompress it first")
            data = gzip.decompress(p.read_bytes())
        else:
            data = p.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise error(f"cannot read {path}: {e}") from None
    pieces = data.split(b"\n")
    last = max((i for i, raw in enumerate(pieces) if raw.strip()), default=-1)
    out: list[tuple[int, Any]] = []
    start = 0  # byte offset of the current piece
    for i, raw in enumerate(pieces):
        if raw.strip():
            try:
                out.append((i + 1, decode_line(raw, first=i == 0)))
            except ValueError as e:
                if i != last:
                    raise error(f"{path}:{i + 1}: {e}") from None
                if repair:
                    _cut(p, start)
                report(f"{path}: dropped a partial last line ({len(data) - start} bytes) left by an interrupted run")
                break
        start += len(raw) + 1
    else:
        if repair and data and not data.endswith(b"\n"):  # a whole record cut just before its newline
            with open(p, "ab") as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
    return out


def _cut(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------------- ids


def record_id(obj: Mapping[str, Any], key: str = "id") -> str | None:
    """A record's id as a string, None when it has none; ValueError unless a non-empty string or an integer."""
    if key not in obj:
        return None
    value = obj[key]
    # bool is an int to Python, never an id here; null is not "no id" either (it would be written back as null)
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise ValueError(f"'{key}' must be a non-empty string or an integer, got {json.dumps(value)}")
    return str(value)


def line_id(lineno: int) -> str:
    """The id a record without one gets: `line-N` (changed by `RecordIds` if a real id is that already)."""
    return f"line-{lineno}"


class RecordIds:
    """The ids of one file's records: each real id valid and unique; the missing ones made up at the end.

    `add` a line once it is otherwise good. A record without an id gets `line-N`, or, should a real id of the
    file be that already, `line-N.2`, `line-N.3`, ...: a made-up id never equals a real one, and depends only
    on the file, so a resumed run makes up the same ones.
    """

    def __init__(self, key: str = "id"):
        self.key = key
        self.first: dict[str, int] = {}  # real id -> line it is on
        self.missing: list[int] = []  # lines of records without an id

    def add(self, obj: Mapping[str, Any], lineno: int) -> str | None:
        """Check one record's id; returns it (None: made up later); ValueError if invalid or a duplicate."""
        rid = record_id(obj, self.key)
        if rid is None:
            self.missing.append(lineno)
        elif rid in self.first:
            raise ValueError(f"duplicate id {rid!r} (first at line {self.first[rid]})")
        else:
            self.first[rid] = lineno
        return rid

    def made_up(self) -> dict[int, str]:
        """Line number -> id, for the records added without one."""
        out: dict[int, str] = {}
        for lineno in self.missing:
            rid, k = line_id(lineno), 1
            while rid in self.first:
                k += 1
                rid = f"{line_id(lineno)}.{k}"
            out[lineno] = rid
        return out
