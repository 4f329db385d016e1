"""Batch classification of a file: JSONL, CSV or plain text in; JSONL or CSV out, resumable.

Each result is written and flushed as soon as it exists, so an interrupted run keeps its work and
`resume` continues after the last input already in the output file: a half-written last record is
cut off (the file truncated where the last whole record ends; the records before it are never
rewritten), so a run killed at any byte and resumed leaves the same file as one never interrupted.
A JSONL record is one line whatever its text holds: line and paragraph separators (U+0085, U+2028,
U+2029) and lone surrogates are written as JSON escapes, beside the control characters JSON escapes.
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from . import settings
from .classifier import Classification
from .errors import InputError
from .text import clean_text

OUTPUT_FIELDS = ("line", "text", "label", "display", "confidence", "error")
# What json.dumps leaves raw that str.splitlines splits at, or that UTF-8 cannot hold: written as \uXXXX escapes.
LINE_BREAKING = re.compile("[\u0085\u2028\u2029\ud800-\udfff]")
BLOCK = 1 << 16


@dataclass
class BatchSummary:
    done: int
    skipped: int  # already in the output when resuming
    seconds: float

    @property
    def texts_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


def read_inputs(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) for each input: `text` of a JSONL object or CSV row, or each non-blank line."""
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        if path.suffix.lower() == ".jsonl":
            yield from _jsonl_texts(path, handle)
        elif path.suffix.lower() == ".csv":
            yield from _csv_texts(path, handle)
        else:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line.rstrip("\r\n")


def _jsonl_texts(path: Path, handle: TextIO) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InputError(f"{path}:{number}: expected an object with a \"text\" string")
        yield number, record["text"]


def _csv_texts(path: Path, handle: TextIO) -> Iterator[tuple[int, str]]:
    reader = csv.reader(handle)
    header = next(reader, None)
    if header is None:
        return
    column = header.index("text") if "text" in header else 0
    for number, row in enumerate(reader, start=2):
        if len(row) > column and row[column].strip():
            yield number, row[column]


def jsonl_record(record: dict) -> str:
    """One result as one JSON line that any line reader splits only at its end."""
    text = json.dumps({field: record[field] for field in OUTPUT_FIELDS}, ensure_ascii=False)
    return LINE_BREAKING.sub(lambda match: f"\\u{ord(match.group()):04x}", text) + "\n"


def last_done_line(output: Path) -> int:
    """The input line number of the last complete result in `output`. A half-written last record (the
    run was interrupted while writing it) is cut off by truncating the file where the last complete
    record ends; nothing before that is rewritten."""
    if not output.is_file():
        return 0
    with output.open("rb+") as handle:
        end, last = _complete_csv(handle) if output.suffix.lower() == ".csv" else _complete_jsonl(handle)
        if end < handle.seek(0, 2):
            handle.truncate(end)
    if last is None:
        return 0
    try:
        return int(last[0]) if output.suffix.lower() == ".csv" else int(json.loads(last)["line"])
    except (ValueError, KeyError, TypeError, IndexError):
        raise InputError(f"{output}: cannot resume: its last record is not one edgeqwen sentiment wrote") from None


def _complete_jsonl(handle) -> tuple[int, bytes | None]:
    """Where the last complete line ends (just past its newline), and that line (None if there is none)."""
    end = _after_last_newline(handle, handle.seek(0, 2))
    if end == 0:
        return 0, None
    start = _after_last_newline(handle, end - 1)
    handle.seek(start)
    return end, handle.read(end - 1 - start)


def _after_last_newline(handle, before: int) -> int:
    """The offset just past the last b"\\n" in the file's first `before` bytes (0 if none), read backwards."""
    position = before
    while position > 0:
        start = max(0, position - BLOCK)
        handle.seek(start)
        found = handle.read(position - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        position = start
    return 0


def _complete_csv(handle) -> tuple[int, list[str] | None]:
    """Where the last complete CSV row ends (a quoted text may hold line breaks, so the rows are
    parsed), and that row (None if there is no row after the header)."""
    handle.seek(0)
    text = handle.read().decode("utf-8", "surrogateescape")
    pieces = text.split("\n")
    lines = [piece + "\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    read = {"chars": 0, "ends_line": True}

    def feed():
        for line in lines:
            read["chars"] += len(line)
            read["ends_line"] = line.endswith("\n")
            yield line

    complete, count, last = 0, 0, None
    try:
        for row in csv.reader(feed(), strict=True):
            if not read["ends_line"]:
                break
            complete, count = read["chars"], count + 1
            last = row if count > 1 else None  # the first row is the header
    except csv.Error:  # the last row stops inside a quoted text
        pass
    return len(text[:complete].encode("utf-8", "surrogateescape")), last


class RecordWriter:
    """Appends result records to `output` (.jsonl or .csv) or, without one, JSONL to `stdout`, flushed
    after each write: the one output format of every batch path (one process, or a Ray cluster)."""

    def __init__(self, output: Path | None, *, resume: bool = False, stdout: TextIO | None = None) -> None:
        if output is not None and output.exists() and output.stat().st_size and not resume:
            raise InputError(f"{output} exists: pass --resume to continue it, or choose another --output")
        self.skip_through = last_done_line(output) if output is not None and resume else 0
        self._owned = output is not None
        is_csv = output is not None and output.suffix.lower() == ".csv"
        # CSV has no escapes: a lone surrogate in a text is written as the characters \udXXX
        errors = "backslashreplace" if is_csv else "strict"
        self._handle = output.open("a", encoding="utf-8", errors=errors, newline="") if output is not None else stdout
        self._csv = csv.writer(self._handle) if is_csv else None
        if self._csv is not None and self._handle.tell() == 0:
            self._csv.writerow(OUTPUT_FIELDS)

    def write(self, records: list[dict]) -> None:
        for record in records:
            if self._csv is not None:
                self._csv.writerow([record[field] for field in OUTPUT_FIELDS])
            else:
                self._handle.write(jsonl_record(record))
        self._handle.flush()

    def close(self) -> None:
        if self._owned:
            self._handle.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def classify_file(
    classify_many: Callable[[list[str]], list[Classification]],
    inputs: Path,
    output: Path | None,
    *,
    resume: bool = False,
    stdout: TextIO | None = None,
    on_progress: Callable[[int], None] | None = None,
    batch_size: int = settings.BATCH_SIZE,
) -> BatchSummary:
    """Classify every input of `inputs`, `batch_size` at a time, appending a record per result to
    `output` (or `stdout`) in input order, flushed after each batch."""
    started, done, skipped = time.perf_counter(), 0, 0
    pending: list[tuple[int, str]] = []
    with RecordWriter(output, resume=resume, stdout=stdout) as writer:

        def flush() -> None:
            nonlocal done
            writer.write(classify_records(classify_many, pending))
            done += len(pending)
            pending.clear()
            if on_progress:
                on_progress(done + skipped)

        for number, text in read_inputs(inputs):
            if number <= writer.skip_through:
                skipped += 1
                continue
            pending.append((number, text))
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
    return BatchSummary(done=done, skipped=skipped, seconds=time.perf_counter() - started)


def classify_records(classify_many: Callable[[list[str]], list[Classification]],
                     batch: list[tuple[int, str]]) -> list[dict]:
    """A record per input of `batch`, in order; an input that cannot be classified (e.g. empty) is
    reported in its record, and the others are classified together."""
    records: list[dict] = []
    good: list[tuple[int, str]] = []
    for number, text in batch:
        try:
            clean_text(text)
            good.append((number, text))
        except InputError as error:
            records.append({"line": number, "text": text, "label": None, "display": None, "confidence": None,
                            "error": str(error)})
    for (number, text), result in zip(good, classify_many([text for _, text in good]) if good else []):
        records.append({"line": number, "text": text, "label": result.label, "display": result.display,
                        "confidence": round(result.confidence, 4), "error": None})
    return sorted(records, key=lambda record: record["line"])


def count_inputs(inputs: Path) -> int:
    """How many inputs a file holds (for a progress bar's total)."""
    return sum(1 for _ in read_inputs(inputs))
