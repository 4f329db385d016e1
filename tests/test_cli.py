"""The `edgeqwen` command: end to end as a real subprocess once, the rest in-process (typer's runner)
against the real model, or with no model where the command must refuse before loading one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys


def test_the_console_script_labels_a_review_and_llama_cpp_stays_silent(cli):
    done = cli("run", "这家餐厅的服务太差了")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"sentiment: 负面 negative \(confidence 0\.\d\d\)", done.stdout.decode().strip()), done.stdout
    assert float(done.stdout.decode().strip()[-5:-1]) > 0.5
    assert b"llama" not in done.stderr  # llama.cpp's log is silent without --verbose


def test_stdin_gives_one_json_object_per_line_and_survives_bad_bytes(invoke_model):
    lines = ("Great phone, I love it!\n\nWhat is the capital of France?\n".encode()
             + b"\xff\xfe awful, broken on arrival\n")
    done = invoke_model("run", "-", "--json", input=lines)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == 3
    assert "line 2: empty" in done.stderr
    review, question, bad = results
    assert review["task"] == "sentiment" and review["label"] == "positive" and 0.5 < review["confidence"] <= 1
    assert question["task"] == "chat" and question["reply"] and question["label"] is None
    assert bad["text"].startswith("\ufffd") and bad["label"] == "negative"
    for result in results:
        assert {"task", "label", "confidence", "reply", "timings", "route"} <= set(result)
        assert result["timings"]["total_ms"] > 0


def test_task_both_runs_sentiment_then_chat(invoke_model):
    done = invoke_model("run", "--task", "both", "--json", "I love this little café.")
    result = json.loads(done.stdout)
    assert result["task"] == "both" and result["label"] == "positive" and result["reply"]


def test_chat_streams_to_stdout(invoke_model):
    done = invoke_model("run", "--task", "chat", "Say hi.")
    assert done.returncode == 0 and done.stdout.strip()


def test_empty_text_is_a_clear_error(invoke):
    done = invoke("run", "   ")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: empty input: give some text to analyse"


def test_missing_model_is_one_line_naming_the_fix(invoke, tmp_path):
    done = invoke("run", "hello", env_extra={"EDGEQWEN_MODEL": str(tmp_path / "none.gguf")})
    assert done.returncode == 1
    message = done.stderr.strip()
    assert "\n" not in message and "none.gguf" in message and "make model" in message


def test_non_gguf_model_is_one_line(invoke, tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"this is not a model" * 100)
    done = invoke("run", "hello", "--model", str(fake))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "fake.gguf" in done.stderr


def test_bad_role_file_is_one_line(invoke, tmp_path):
    (tmp_path / "topic.yaml").write_text("kind: classify\nsystem: x\nlabels: [{name: a}, {name: b}]\ncolor: red\n")
    done = invoke("roles", "--prompts", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.strip().endswith("topic.yaml: field 'color': Extra inputs are not permitted")


def test_new_role_file_is_listed(invoke, tmp_path):
    (tmp_path / "topic.yaml").write_text("kind: classify\nsystem: Topic?\nlabels: [{name: sports}, {name: politics}]\n")
    done = invoke("roles", "--prompts", str(tmp_path))
    assert done.returncode == 0
    assert "topic" in done.stdout and "sports, politics" in done.stdout
    # the shipped router
    assert "head route.head.npz (reads the text through the 'sentiment' role's prompt)" in done.stdout


def test_info_prints_gguf_metadata(invoke, model_path):
    done = invoke("info", str(model_path), "--json")
    fields = json.loads(done.stdout)
    assert fields["architecture"] == "qwen2"
    assert fields["file_type"] == "Q4_K_M"
    assert fields["has_chat_template"] is True
    assert fields["context_length"] == 32768


def test_unknown_task_is_refused(invoke):
    done = invoke("run", "--task", "poem", "hi")
    assert done.returncode == 2 and "unknown --task" in done.stderr


def test_help_teaches_with_examples(invoke):
    for command in ("run", "eval", "train-head", "chat-check", "sentiment", "serve", "heads", "quantize"):
        done = invoke(command, "--help")
        assert done.returncode == 0 and "Examples" in done.stdout, command


# -- the CLI's own work on the fake engine (fast tier: tests/fake_engine.py, no model file) ---------


def test_run_prints_the_label_line_and_streams_a_reply(invoke_fake):
    done = invoke_fake("run", "--task", "sentiment", "The soup was terrible.")
    assert (done.returncode, done.stderr) == (0, "")
    assert re.fullmatch(r"sentiment: 负面 negative \(confidence 0\.\d\d\)\n", done.stdout), done.stdout
    chat = invoke_fake("run", "--task", "chat", "Tell me about tea please")
    assert chat.returncode == 0 and chat.stdout.startswith("Reply ") and chat.stdout.endswith("Tell me about tea "
                                                                                              "please\n")


def test_run_json_lines_from_stdin_keep_order_skip_blanks_and_survive_bad_bytes(invoke_fake):
    lines = b"Lovely staff, great room.\n\n   \nHow do I boil an egg?\n\xff\xfe broken on arrival\n"
    done = invoke_fake("run", "-", "--json", input=lines)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["task"] for r in results] == ["sentiment", "chat", "sentiment"]
    assert results[2]["text"].startswith("\ufffd") and results[0]["label"] == "positive" and results[1]["reply"]
    assert "line 2: empty, skipped" in done.stderr and "line 3: empty, skipped" in done.stderr
    for result in results:
        assert set(result) == {"text", "task", "route", "label", "display", "confidence", "reply", "truncated",
                               "timings"}


def test_run_both_gives_the_label_then_the_reply(invoke_fake):
    result = json.loads(invoke_fake("run", "--task", "both", "--json", "The room was awful.").stdout)
    assert result["task"] == "both" and result["label"] == "negative" and result["reply"].startswith("Reply ")
    shown = invoke_fake("run", "--task", "both", "The room was awful.").stdout.splitlines()
    assert shown[0].startswith("Reply ") and shown[1].startswith("sentiment: 负面 negative")


def test_sentiment_file_writes_csv_and_resumes_without_doing_a_line_twice(invoke_fake, tmp_path):
    inputs = tmp_path / "in.jsonl"
    texts = ["great phone", "terrible battery", "   ", "lovely screen", "bad support"]
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    output = tmp_path / "out.jsonl"
    first = invoke_fake("sentiment", str(inputs), "-o", str(output))
    assert first.returncode == 0 and "5 classified (0 already done)" in first.stderr, first.stderr
    records = output.read_text(encoding="utf-8").splitlines()
    assert [json.loads(r)["label"] for r in records] == ["positive", "negative", None, "positive", "negative"]
    output.write_text("\n".join(records[:2]) + "\n" + records[2][:7], encoding="utf-8")  # a kill mid-record
    again = invoke_fake("sentiment", str(inputs), "-o", str(output), "--resume")
    assert again.returncode == 0 and "3 classified (2 already done)" in again.stderr, again.stderr
    assert output.read_text(encoding="utf-8").splitlines() == records
    refused = invoke_fake("sentiment", str(inputs), "-o", str(output))
    assert refused.returncode == 2 and "--resume" in refused.stderr and refused.stderr.count("\n") == 1


def test_eval_report_and_json_on_the_fake_engine(invoke_fake, tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [("great", "positive", "en"), ("awful", "negative", "en"), ("很好", "positive", "zh"),
            ("太差了", "negative", "zh")]
    data.write_text("".join(json.dumps({"text": t, "label": g, "lang": lang}, ensure_ascii=False) + "\n"
                            for t, g, lang in rows), encoding="utf-8")
    out = tmp_path / "report.json"
    done = invoke_fake("eval", str(data), "--compare", "--json", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["n"] == 4 and [s["system"] for s in report["systems"]][:1] == ["edgeqwen role 'sentiment'"]
    assert report["systems"][0]["accuracy"] == 1.0 and set(report["systems"][0]["by_lang"]) == {"en", "zh"}
    assert "confusion" in done.stdout and "seed prompt (reconstruction)" in done.stdout


def test_commands_that_need_no_model_never_import_llama_cpp(tmp_path):
    """--help, roles, info and doctor run in a fresh interpreter: none loads llama.cpp (doctor reads the
    build's feature line from a child process, so a build this CPU cannot run kills the child, not doctor)."""
    missing = str(tmp_path / "none.gguf")
    code = f"""
import sys
from typer.testing import CliRunner
from edgeqwen.cli import app
runner = CliRunner()
for args in (["--help"], ["roles"], ["info", {missing!r}], ["doctor", "--json", "--model", {missing!r}]):
    done = runner.invoke(app, args)
    print(args[0], "llama_cpp" in sys.modules, done.exit_code, "CPU :" in done.stdout)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    rows = [line.split() for line in out.stdout.splitlines()]
    assert [row[:2] for row in rows] == [["--help", "False"], ["roles", "False"], ["info", "False"],
                                         ["doctor", "False"]], out.stderr
    assert rows[0][2] == rows[1][2] == "0" and rows[2][2] != "0"  # info refuses the missing file in one line
    assert rows[3][3] == "True"  # doctor still reports the build
