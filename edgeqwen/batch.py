"""Batch classification of a file: JSONL, CSV or plain text in; JSONL or CSV out, resumable.

Each result is written and flushed as soon as it exists, so an interrupted run keeps its work and
`resume` continues after the last input already in the output file.
"""

from __future__ import annotations

import csv
import io
import json
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


def last_done_line(output: Path) -> int:
    """The input line number of the last complete result in `output`; drops a half-written last line."""
    if not output.is_file() or output.stat().st_size == 0:
        return 0
    data = output.read_bytes()
    if not data.endswith(b"\n"):  # interrupted mid-write: the partial record goes
        data = data[: data.rfind(b"\n") + 1]
        output.write_bytes(data)
    lines = data.decode("utf-8", "replace").splitlines()
    if not lines:
        return 0
    if output.suffix.lower() == ".csv":
        rows = list(csv.reader(io.StringIO("\n".join(lines))))
        return int(rows[-1][0]) if len(rows) > 1 else 0
    return int(json.loads(lines[-1])["line"])


class RecordWriter:
    """Appends result records to `output` (.jsonl or .csv) or, without one, JSONL to `stdout`, flushed
    after each write: the one output format of every batch path (one process, or a Ray cluster)."""

    def __init__(self, output: Path | None, *, resume: bool = False, stdout: TextIO | None = None) -> None:
        if output is not None and output.exists() and output.stat().st_size and not resume:
            raise InputError(f"{output} exists: pass --resume to continue it, or choose another --output")
        self.skip_through = last_done_line(output) if output is not None and resume else 0
        self._owned = output is not None
        self._handle = output.open("a", encoding="utf-8", newline="") if output is not None else stdout
        self._csv = csv.writer(self._handle) if output is not None and output.suffix.lower() == ".csv" else None
        if self._csv is not None and self._handle.tell() == 0:
            self._csv.writerow(OUTPUT_FIELDS)

    def write(self, records: list[dict]) -> None:
        for record in records:
            if self._csv is not None:
                self._csv.writerow([record[field] for field in OUTPUT_FIELDS])
            else:
                self._handle.write(json.dumps({field: record[field] for field in OUTPUT_FIELDS}, ensure_ascii=False) + "\n")
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


def classify_records(classify_many: Callable[[list[str]], list[Classification]], batch: list[tuple[int, str]]) -> list[dict]:
    """A record per input of `batch`, in order; an input that cannot be classified (e.g. empty) is
    reported in its record, and the others are classified together."""
    records: list[dict] = []
    good: list[tuple[int, str]] = []
    for number, text in batch:
        try:
            clean_text(text)
            good.append((number, text))
        except InputError as error:
            records.append({"line": number, "text": text, "label": None, "display": None, "confidence": None, "error": str(error)})
    for (number, text), result in zip(good, classify_many([text for _, text in good]) if good else []):
        records.append({"line": number, "text": text, "label": result.label, "display": result.display,
                        "confidence": round(result.confidence, 4), "error": None})
    return sorted(records, key=lambda record: record["line"])


def count_inputs(inputs: Path) -> int:
    """How many inputs a file holds (for a progress bar's total)."""
    return sum(1 for _ in read_inputs(inputs))
