"""`edgeqwen heads`: a head trained for the current model file from a labelled JSONL, for any classify
role, picked up by the role without editing its YAML (in-process, on the real model)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

ROLE = """kind: classify
system: Does this message need an answer today (urgent) or can it wait (later)?
template: "Message: {text}"
labels:
  - {name: urgent}
  - {name: later}
"""
URGENT = [
    "The server is down and customers cannot pay.", "My flight leaves in two hours and the booking vanished.",
    "The kitchen is flooding, what do I turn off?", "Payroll failed and staff get paid tonight.",
    "Smoke is coming out of the charger.", "The client demo starts in ten minutes and the laptop won't boot.",
    "服务器宕机了，客户无法付款。", "孩子发高烧到四十度，现在该怎么办？", "仓库着火了，请马上处理。",
    "银行卡被盗刷了，正在扣钱。",
    "The door lock is broken and I'm locked out in the snow.", "We are losing data right now on the main disk.",
]
LATER = [
    "Some day I'd like to learn the cello.", "Could you suggest a novel for next summer?",
    "No rush, but the blog theme could use new colours.", "Maybe next year we repaint the fence.",
    "When you have time, tidy the old photos folder.", "A book club idea for the autumn.",
    "以后有空的时候想学做面包。", "明年夏天想去海边度假，有什么建议？", "有空帮我整理一下旧照片。",
    "周末可以考虑换个窗帘颜色。",
    "Thinking about a new hobby for the winter months.", "Eventually the garage shelves need sorting.",
]


def write_setup(tmp_path: Path, model_file: Path) -> tuple[Path, Path, Path]:
    model = tmp_path / "my-model.gguf"
    model.symlink_to(model_file.resolve())  # heads go beside the model: keep them out of models/
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "urgency.yaml").write_text(ROLE, encoding="utf-8")
    data = tmp_path / "urgency.jsonl"
    rows = [{"text": t, "label": "urgent"} for t in URGENT] + [{"text": t, "label": "later"} for t in LATER]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return model, prompts, data


@pytest.fixture
def setup(tmp_path: Path, model_path: Path) -> tuple[Path, Path, Path]:
    return write_setup(tmp_path, model_path)


def head_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edgeqwen.head" and r.levelno >= logging.WARNING]


def test_a_users_own_role_gets_a_head_for_the_model_without_editing_yaml(invoke_model, setup, tmp_path, caplog):
    model, prompts, data = setup
    report = tmp_path / "heads.json"
    done = invoke_model("heads", "--model", str(model), "--prompts", str(prompts), "--role", "urgency", "--data",
                        str(data),
                        "--json", str(report))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "my-model.heads" / "urgency.head.npz").is_file()
    result = json.loads(report.read_text())[0]
    assert result["role"] == "urgency" and result["n_train"] + result["n_held_out"] == len(URGENT) + len(LATER)
    assert "urgency" in done.stdout and "with head" in done.stdout
    assert (prompts / "urgency.yaml").read_text(encoding="utf-8") == ROLE  # the YAML is untouched

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgeqwen.head"):
        scored = invoke_model("eval", str(data), "--model", str(model), "--prompts", str(prompts), "--role", "urgency",
                              "--include-trained")
    assert scored.returncode == 0 and "head over" in scored.stdout, scored.stderr[-2000:]
    assert head_warnings(caplog) == []


def test_a_changed_prompt_says_which_command_retrains_its_head(invoke_model, setup, caplog):
    model, prompts, data = setup
    assert invoke_model("heads", "--model", str(model), "--prompts", str(prompts), "--role", "urgency",
                        "--data", str(data)).returncode == 0
    (prompts / "urgency.yaml").write_text(ROLE.replace("answer today", "a reply today"), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="edgeqwen.head"):
        done = invoke_model("eval", str(data), "--model", str(model), "--prompts", str(prompts), "--role", "urgency")
    assert done.returncode == 0
    warnings = [w for w in head_warnings(caplog) if "head not used" in w]
    assert len(warnings) == 1 and "prompt changed" in warnings[0]
    assert f"edgeqwen heads --model {model} --role urgency --data LABELLED.jsonl" in warnings[0]


@pytest.mark.parametrize("args, message", [
    (["--role", "urgency"], "names no training texts"),
    (["--role", "chat"], "is a generate role"),
    (["--data", "DATA"], "name it with --role"),
    (["--role", "nope"], "no role named 'nope'"),
])
def test_heads_refuses_what_it_cannot_train_in_one_line_before_loading_a_model(invoke, tmp_path, args, message):
    model, prompts, data = write_setup(tmp_path, tmp_path / "no-such-model.gguf")  # a dangling link: never opened
    args = [str(data) if a == "DATA" else a for a in args]
    done = invoke("heads", "--model", str(model), "--prompts", str(prompts), *args)
    assert done.returncode in (1, 2) and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (model.parent / "my-model.heads").exists()
