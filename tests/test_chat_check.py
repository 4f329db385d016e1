"""The chat check (`edgeqwen chat-check`): its judging rules on known texts, and a real run."""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from edgeqwen.chat_check import loops, parrots, read_prompts
from edgeqwen.text import script_language
from edgeqwen.errors import InputError

PROMPTS = REPO / "scripts" / "data" / "chat.eval.jsonl"


@pytest.mark.parametrize("text, lang", [
    ("The Great Wall is over 2,000 years old.", "en"),
    ("长城有两千多年的历史。", "zh"),
    ("我的iPhone电池掉电很快，可以试试关闭后台刷新。", "zh"),
    ("Try mapo tofu (麻婆豆腐), a spicy Sichuan dish with soft tofu and minced pork.", "en"),
    ("12345 !!!", None),
])
def test_language_by_script(text, lang):
    assert script_language(text) == lang


def test_parroting_is_a_copy_of_most_of_the_prompt():
    review = "The hotel was clean and the staff were friendly, but breakfast was cold."
    assert parrots(review, review)
    assert parrots(review, "You said: the hotel was clean and the staff were friendly, but breakfast was cold!")
    assert not parrots(review, "Sounds like a mixed stay: good rooms and service, a weak breakfast.")
    assert parrots("房间干净，早餐丰富，下次还会再来。", "房间干净，早餐丰富，下次还会再来。")
    assert not parrots("Hi", "Hi there! How can I help?")
    question = "怎么判断一个西瓜熟没熟？"
    assert not parrots(question, "要判断一个西瓜熟没熟，可以看颜色、听声音、看瓜蒂：颜色深、声音闷、瓜蒂干的通常更熟。")  # restated, then answered


def test_loops_are_repeated_runs():
    assert loops("长城长城长城长城长城")
    assert loops("I can help. I can help. I can help. I can help.")
    assert loops("Here is a long sentence that repeats. Here is a long sentence that repeats. Here is a long sentence that repeats.")
    assert not loops("First, boil water. Second, add the noodles. Third, stir for three minutes.")
    assert not loops("The number is 1000000000000.")


def test_shipped_prompt_set_is_large_and_balanced():
    prompts = read_prompts([PROMPTS])
    for lang in ("en", "zh"):
        mine = [p for p in prompts if p.lang == lang]
        assert len(mine) >= 50
        assert sum(len(p.turns) == 2 for p in mine) >= 10
        assert sum(p.remember is not None for p in mine) >= 5


def test_bad_prompt_lines_are_one_line_errors(invoke, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"lang": "fr", "turns": ["Bonjour"]}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.jsonl:1: field 'lang'"):
        read_prompts([bad])
    done = invoke("chat-check", str(bad))
    assert done.returncode == 2 and done.stderr.count("\n") == 1


def test_chat_check_runs_on_the_real_model(invoke_model, tmp_path):
    sample = tmp_path / "sample.jsonl"
    lines = PROMPTS.read_text(encoding="utf-8").splitlines()
    chosen = [line for line in lines if '"kind": "memory"' in line][:1] + [line for line in lines if '"lang": "zh"' in line][:1]
    sample.write_text("\n".join(chosen) + "\n", encoding="utf-8")
    out = tmp_path / "report.json"
    done = invoke_model("chat-check", str(sample), "--max-tokens", "24", "--json", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    for mode in ("greedy", "sampled"):
        assert report["table"][mode]["all"]["replies"] == 3  # the memory pair's two turns and one single turn
        assert report["table"][mode]["all"]["empty"] == 0.0
    assert "in lang" in done.stdout
