"""Batch classification of files: formats, resumption, bad lines."""

from __future__ import annotations

import csv
import json

import pytest

from edgeqwen.batch import classify_file, last_done_line, read_inputs
from edgeqwen.errors import InputError


TEXTS = ["Great phone, love it!", "质量太差，非常失望。", "Terrible service.", "酒店很干净，服务很好。"]


def test_reads_jsonl_csv_and_plain_text(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(TEXTS)) + "\n")
    with (tmp_path / "a.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["id", "text"], *[[i, t] for i, t in enumerate(TEXTS)]])
    (tmp_path / "a.txt").write_text("\n".join(TEXTS) + "\n\n")
    for name in ("a.jsonl", "a.csv", "a.txt"):
        assert [text for _, text in read_inputs(tmp_path / name)] == TEXTS


def test_bad_jsonl_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: not valid JSON"):
        list(read_inputs(path))


def test_resume_continues_after_the_last_complete_record(eq, tmp_path):
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join(TEXTS) + "\n")
    output = tmp_path / "out.jsonl"
    first = json.dumps({"line": 1, "text": TEXTS[0], "label": "positive", "display": "x", "confidence": 0.9, "error": None})
    output.write_text(first + "\n" + '{"line": 2, "text": "half writ')  # as an interrupted run leaves it
    assert last_done_line(output) == 1
    summary = classify_file(eq.classify_many, inputs, output, resume=True)
    assert (summary.done, summary.skipped) == (3, 1)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4]
    assert [r["label"] for r in records[1:]] == ["negative", "negative", "positive"]


def test_existing_output_needs_resume(eq, tmp_path):
    inputs = tmp_path / "in.txt"
    inputs.write_text("fine\n")
    output = tmp_path / "out.jsonl"
    output.write_text("{}\n")
    with pytest.raises(InputError, match="--resume"):
        classify_file(eq.classify_many, inputs, output)


def test_cli_batch_to_csv_with_an_empty_input(invoke_model, tmp_path):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("\n".join(json.dumps({"text": t}) for t in [*TEXTS[:2], "   "]) + "\n")
    output = tmp_path / "out.csv"
    done = invoke_model("sentiment", str(inputs), "-o", str(output))
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(output.open()))
    assert [r["label"] for r in rows] == ["positive", "negative", ""]
    assert "empty input" in rows[2]["error"]
    assert "texts/s" in done.stderr
