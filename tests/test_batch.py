"""Batch classification of files: formats, resumption, bad lines."""

from __future__ import annotations

import csv
import json
import os
from types import SimpleNamespace

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
    first = json.dumps({"line": 1, "text": TEXTS[0], "label": "positive", "display": "x", "confidence": 0.9,
                        "error": None})
    output.write_text(first + "\n" + '{"line": 2, "text": "half writ')  # as an interrupted run leaves it
    assert last_done_line(output) == 1
    summary = classify_file(eq.classify_many, inputs, output, resume=True)
    assert (summary.done, summary.skipped) == (3, 1)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4]
    assert [r["label"] for r in records[1:]] == ["negative", "negative", "positive"]


# Texts that broke resuming (U+2028, U+0085, U+2029: str.splitlines splits there; a lone surrogate:
# UTF-8 cannot hold it) beside line breaks, quotes and commas that CSV must quote, and an empty text.
AWKWARD = ["plain review", "a\u2028b line separator", "c\u0085d next line", "e\u2029f paragraph",
           "lone \ud800 surrogate", "x\ny newline", 'quote " and, comma', "crlf\r\ninside", "中文评论很好", "emoji 😀",
           "   ", "ctl \x0b\x0c\x1c\x1e", "\udfff"]


def fake_classify_many(texts: list[str]) -> list[SimpleNamespace]:
    """A fixed rule instead of the model: the output file's shape, not its labels, is under test."""
    return [SimpleNamespace(label="positive" if len(t) % 2 else "negative", display="x", confidence=len(t) % 7 / 7)
            for t in texts]


def awkward_inputs(tmp_path):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in AWKWARD), encoding="utf-8")
    return inputs


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_after_a_kill_at_any_byte_gives_the_uninterrupted_output(tmp_path, suffix):
    """Every prefix of a finished output file is what a kill at that byte leaves; resuming each must
    give exactly the finished file. Before: no file could be written (the lone surrogates); without
    them, 335 of 1,268 cuts of the JSONL file failed to resume, and of 466 cuts of the CSV file 81
    failed and 59 resumed to another file."""
    inputs = awkward_inputs(tmp_path)
    full_path = tmp_path / f"full{suffix}"
    assert classify_file(fake_classify_many, inputs, full_path, batch_size=4).done == len(AWKWARD)
    full = full_path.read_bytes()
    cut_path = tmp_path / f"cut{suffix}"
    for cut in range(len(full) + 1):
        cut_path.write_bytes(full[:cut])
        summary = classify_file(fake_classify_many, inputs, cut_path, resume=True, batch_size=4)
        assert cut_path.read_bytes() == full, f"cut at byte {cut}"
        assert summary.done + summary.skipped == len(AWKWARD)


def test_records_round_trip_every_line_separator_and_lone_surrogate(tmp_path):
    inputs, output = awkward_inputs(tmp_path), tmp_path / "out.jsonl"
    classify_file(fake_classify_many, inputs, output)
    text = output.read_text(encoding="utf-8")
    assert len(text.splitlines()) == len(AWKWARD)  # one record a line, even for str.splitlines
    assert [json.loads(line)["text"] for line in text.splitlines()] == AWKWARD
    classify_file(fake_classify_many, inputs, tmp_path / "out.csv")
    with (tmp_path / "out.csv").open(newline="", encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    assert texts[:4] == AWKWARD[:4] and texts[4] == "lone \\ud800 surrogate"  # CSV has no escapes: written as text


def test_resume_cuts_a_half_record_without_rewriting_the_file(tmp_path):
    """Before: the output was read and written back whole, so a kill during that write lost every
    earlier result. Now the half record is cut off where it starts: same file, earlier bytes untouched."""
    output = tmp_path / "out.jsonl"
    record = {"text": "t", "label": "positive", "display": "x", "confidence": 1.0, "error": None}
    complete = "".join(json.dumps({"line": n, **record}) + "\n" for n in range(1, 2001))
    output.write_text(complete + '{"line": 2001, "text": "half', encoding="utf-8")
    inode = os.stat(output).st_ino
    assert last_done_line(output) == 2000
    assert os.stat(output).st_ino == inode and output.read_text(encoding="utf-8") == complete


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
