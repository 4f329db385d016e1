"""The `edgeqwen` command as a real subprocess against the real model."""

from __future__ import annotations

import json

from conftest import STANDIN, run_cli


def test_one_shot_routes_a_review_to_sentiment():
    done = run_cli("run", "这家餐厅的服务太差了")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == "sentiment: 负面 negative (confidence 0.99)" or "负面 negative" in done.stdout.decode()
    assert b"llama" not in done.stderr  # llama.cpp's log is silent without --verbose


def test_stdin_gives_one_json_object_per_line_and_survives_bad_bytes():
    lines = "Great phone, I love it!\n\nWhat is the capital of France?\n".encode() + b"\xff\xfe awful, broken on arrival\n"
    done = run_cli("run", "-", "--json", input=lines)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert len(results) == 3
    assert b"line 2: empty" in done.stderr
    review, question, bad = results
    assert review["task"] == "sentiment" and review["label"] == "positive" and 0.5 < review["confidence"] <= 1
    assert question["task"] == "chat" and question["reply"] and question["label"] is None
    assert bad["text"].startswith("\ufffd") and bad["label"] == "negative"
    for result in results:
        assert {"task", "label", "confidence", "reply", "timings", "route"} <= set(result)
        assert result["timings"]["total_ms"] > 0


def test_task_both_runs_sentiment_then_chat():
    done = run_cli("run", "--task", "both", "--json", "I love this little café.")
    result = json.loads(done.stdout)
    assert result["task"] == "both" and result["label"] == "positive" and result["reply"]


def test_chat_streams_to_stdout():
    done = run_cli("run", "--task", "chat", "Say hi.")
    assert done.returncode == 0 and done.stdout.decode().strip()


def test_empty_text_is_a_clear_error():
    done = run_cli("run", "   ")
    assert done.returncode == 2
    assert done.stderr.decode().strip() == "error: empty input: give some text to analyse"


def test_missing_model_is_one_line_naming_the_fix(tmp_path):
    done = run_cli("run", "hello", env={"EDGEQWEN_MODEL": str(tmp_path / "none.gguf")})
    assert done.returncode == 1
    message = done.stderr.decode().strip()
    assert "\n" not in message and "none.gguf" in message and "make model" in message


def test_non_gguf_model_is_one_line(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"this is not a model" * 100)
    done = run_cli("run", "hello", "--model", str(fake))
    assert done.returncode == 1
    assert done.stderr.decode().count("\n") == 1 and "fake.gguf" in done.stderr.decode()


def test_bad_role_file_is_one_line(tmp_path):
    (tmp_path / "topic.yaml").write_text("kind: classify\nsystem: x\nlabels: [{name: a}, {name: b}]\ncolor: red\n")
    done = run_cli("roles", "--prompts", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.decode().strip().endswith("topic.yaml: field 'color': Extra inputs are not permitted")


def test_new_role_file_is_listed(tmp_path):
    (tmp_path / "topic.yaml").write_text("kind: classify\nsystem: Topic?\nlabels: [{name: sports}, {name: politics}]\n")
    done = run_cli("roles", "--prompts", str(tmp_path))
    assert done.returncode == 0
    assert "topic" in done.stdout.decode() and "sports, politics" in done.stdout.decode()
    assert "head route.head.npz (reads the text through the 'sentiment' role's prompt)" in done.stdout.decode()  # the shipped router


def test_info_prints_gguf_metadata():
    done = run_cli("info", str(STANDIN), "--json")
    fields = json.loads(done.stdout)
    assert fields["architecture"] == "qwen2"
    assert fields["file_type"] == "Q4_K_M"
    assert fields["has_chat_template"] is True
    assert fields["context_length"] == 32768


def test_unknown_task_is_refused():
    done = run_cli("run", "--task", "poem", "hi")
    assert done.returncode == 2 and "unknown --task" in done.stderr.decode()


def test_help_teaches_with_examples():
    done = run_cli("run", "--help")
    assert b"Examples" in done.stdout and b"--task" in done.stdout
