"""The chat check (`edgeqwen chat-check`): its judging rules on known texts, and a real run."""

from __future__ import annotations

import json

import pytest

from edgeqwen.chat_check import ChatPrompt, Reply, instruction_texts, judge, leaks, loops, parrots, read_prompts, report
from edgeqwen.errors import InputError
from edgeqwen.reply_judging import borrowed_share, responds, response_markers, restates
from edgeqwen.roles import load_roles
from edgeqwen.text import asks, script_language

from conftest import REPO

PROMPTS = REPO / "scripts" / "data" / "chat.eval.jsonl"
HELD_OUT = REPO / "scripts" / "data" / "chat.heldout.jsonl"
HELD_OUT_2 = REPO / "scripts" / "data" / "chat.heldout2.jsonl"


@pytest.mark.parametrize("text, lang", [
    ("The Great Wall is over 2,000 years old.", "en"),
    ("长城有两千多年的历史。", "zh"),
    ("我的iPhone电池掉电很快，可以试试关闭后台刷新。", "zh"),
    ("Try mapo tofu (麻婆豆腐), a spicy Sichuan dish with soft tofu and minced pork.", "en"),
    ("12345 !!!", None),
])
def test_language_by_script(text, lang):
    assert script_language(text) == lang


@pytest.mark.parametrize("text, asking", [
    ("How do I get rid of fruit flies?", True), ("Why does bread go stale faster in the fridge", True),
    ("Is it better to study in the morning or at night", True), ("Tell me three ways to save water.", True),
    ("I need a quick idea for dinner. I have rice and eggs.", True), ("Great phone. Can you recommend a case?", True),
    ("猫咪可以喝牛奶吗", True), ("帮我写一条生日祝福。", True), ("下雨天可以做些什么？给我两个主意。", True),
    ("为什么冬天皮肤容易干燥", True),
    ("The soup was cold and the waiter was rude.", False), ("What a great double cheeseburger!", False),
    ("When I got home the parcel was already there.", False), ("Could not get a strong enough signal.", False),
    ("房间干净，早餐丰富，下次还会再来。", False), ("刚搬到新的城市，还没认识什么朋友。", False),
    ("这本书，写得太好了。", False),
])
def test_a_text_that_asks_a_question_or_makes_a_request(text, asking):
    assert asks(text) is asking


def test_parroting_is_a_copy_of_most_of_the_prompt():
    review = "The hotel was clean and the staff were friendly, but breakfast was cold."
    assert parrots(review, review)
    assert parrots(review, "You said: the hotel was clean and the staff were friendly, but breakfast was cold!")
    assert not parrots(review, "Sounds like a mixed stay: good rooms and service, a weak breakfast.")
    assert parrots("房间干净，早餐丰富，下次还会再来。", "房间干净，早餐丰富，下次还会再来。")
    assert not parrots("Hi", "Hi there! How can I help?")
    question = "怎么判断一个西瓜熟没熟？"
    # restated, then answered
    assert not parrots(question, "要判断一个西瓜熟没熟，可以看颜色、听声音、看瓜蒂：颜色深、声音闷、瓜蒂干的通常更熟。")


def test_loops_are_repeated_runs():
    assert loops("长城长城长城长城长城")
    assert loops("I can help. I can help. I can help. I can help.")
    assert loops("Here is a long sentence that repeats. " * 3)
    assert not loops("First, boil water. Second, add the noodles. Third, stir for three minutes.")
    assert not loops("The number is 1000000000000.")


@pytest.mark.parametrize("reply, markers", [
    ("I'm so sorry the pizza came cold. Did the shop offer a refund?", ["apology", "question"]),
    ("Congratulations on passing the test!", ["congratulations"]),
    ("Thanks for sharing this.", ["thanks"]),
    ("Your grandmother must be proud.", ["second person"]),
    ("I'd suggest asking for a room on a higher floor next time.", ["advice"]),
    ("谢谢你的分享！", ["second person", "thanks"]),
    ("听起来很辛苦，早点休息吧。有什么想聊的吗", ["question"]),
    ("恭喜！", ["congratulations"]),
    ("很遗憾听到这个消息。", ["apology"]),
    ("建议下次提前预订。", ["advice"]),
    ("The movie was very boring and long, making it even more difficult to enjoy.", []),
    ("房间整洁，早餐丰富。", []),
    ("演员演技尴尬", []),
])
def test_response_markers_per_language(reply, markers):
    assert response_markers(reply) == markers
    assert responds(reply) == bool(markers)


def test_a_refusal_is_not_a_response():
    refusals = ("I'm sorry, but I can't assist with that.", "Sorry, I cannot help you with this.",
                "抱歉，我无法回答这个问题。")
    for refusal in refusals:
        assert response_markers(refusal) and not responds(refusal)
    assert responds("I'm sorry you can't find help with that old laptop. Have you tried a repair shop?")


def test_restatement_is_most_content_from_the_input():
    review = "房间干净，早餐丰富，下次还会再来。"
    assert restates(review, "房间干净，早餐丰富")
    assert restates(review, "房间整洁，早餐丰富。")  # 6 of 8 characters from the review
    assert not restates(review, "太好了，住得舒服最重要！你这次是去那边旅游还是出差？")
    assert not restates(review, "好的")  # too short to judge
    movie = "The movie was boring and far too long; I could not enjoy it."
    assert restates(movie, "The movie was very boring and long, making it even more difficult to enjoy.")
    assert not restates(movie, "That's a shame. What kind of films do you usually like? I could suggest a shorter one.")
    pizza = "Terrible delivery experience. The pizza arrived cold and an hour late."
    both = "I'm sorry the pizza arrived cold and late. Did you contact them?"
    assert responds(both) and restates(pizza, both)  # judged apart: a response can also restate
    assert borrowed_share(pizza, "Arrived arriving arrive!") == 1.0  # compared by stem
    assert borrowed_share("I love dogs.", "Dogs are great, dogs are loyal.") == 0.5  # each occurrence counts


def _reply(kind: str, text: str, prompt: str = "I finally passed my driving test.") -> Reply:
    return judge(Reply(ChatPrompt("x", "en", kind, (prompt,), None, "x:1"), 0, text, "stop", 10.0, 5, 0.1))


def test_report_gives_response_and_restatement_per_language_and_kind():
    replies = [_reply("statement", "Congratulations! How long did you practise?"),
               _reply("statement", "You passed your driving test."),
               _reply("statement", "I finally passed the driving test."),
               _reply("question", "Boil it for six minutes.", "How long should I boil an egg?")]
    result = report({"greedy": replies})
    statements = result["by_kind"]["greedy"]["en"]["statement"]
    assert statements == {"replies": 3, "response": round(2 / 3, 4), "restatement": round(2 / 3, 4)}
    assert result["by_kind"]["greedy"]["en"]["question"] == {"replies": 1, "response": 0.0, "restatement": 0.0}
    assert result["by_kind"]["greedy"]["en"]["review+statement"]["replies"] == 3
    assert result["table"]["greedy"]["en"]["response"] == 0.5
    failed = {(f["id"], f["reply"]): f["failed"] for f in result["failures"]}
    assert failed[("x", "I finally passed the driving test.")] == ["response", "restatement"]
    assert ("x", "Boil it for six minutes.") not in failed  # an answer to a question need not address the person


def test_shipped_prompt_set_is_large_and_balanced():
    prompts = read_prompts([PROMPTS])
    for lang in ("en", "zh"):
        mine = [p for p in prompts if p.lang == lang]
        assert len(mine) >= 50
        assert sum(len(p.turns) == 2 for p in mine) >= 10
        assert sum(p.remember is not None for p in mine) >= 5
        assert sum(p.kind == "review" for p in mine) >= 16 and sum(p.kind == "statement" for p in mine) >= 16


def _turns(path) -> set[str]:
    return {turn for p in read_prompts([path]) for turn in p.turns}


@pytest.mark.parametrize("path", [HELD_OUT, HELD_OUT_2])
def test_held_out_prompts_are_apart_from_the_tuning_set_and_each_other(path):
    held_out = read_prompts([path])
    assert not _turns(PROMPTS) & _turns(path)
    assert not _turns(HELD_OUT) & _turns(HELD_OUT_2)
    for lang in ("en", "zh"):
        for kind in ("review", "statement"):
            assert sum(p.lang == lang and p.kind == kind for p in held_out) >= 12
    assert [p.kind for p in read_prompts([path], kinds=["question"])] == ["question"] * 8


def test_a_reply_that_repeats_the_role_instructions_leaks():
    chat = load_roles()["chat"]
    instructions = instruction_texts(chat)
    assert chat.system_by_language["zh"] in instructions and not any("{text}" in t for t in instructions)
    comfort_me = chat.guidance[1].template_by_language["zh"].split("{text}")[1].strip().strip("（）")
    assert leaks("真让人失望。" + comfort_me, instructions)
    assert not leaks("真让人失望，你可以联系客服问问。", instructions)
    assert leaks("Sure! " + chat.system_by_language["en"][:60], instructions)
    assert not leaks("Please reply in English.", instructions)  # a piece under 24 letters
    leaked = judge(Reply(ChatPrompt("x", "zh", "review", ("外卖太慢了。",), None, "x:1"), 0,
                         "外卖太慢。" + comfort_me, "stop", 10.0, 5, 0.1), instructions)
    assert leaked.checks["leak"] and ["leak"] == report({"greedy": [leaked]})["failures"][0]["failed"][:1]


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
    chosen = [line for line in lines if '"kind": "memory"' in line][:1]
    chosen += [line for line in lines if '"lang": "zh"' in line][:1]
    sample.write_text("\n".join(chosen) + "\n", encoding="utf-8")
    out = tmp_path / "report.json"
    done = invoke_model("chat-check", str(sample), "--max-tokens", "24", "--json", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    for run in ("greedy", "sampled", "greedy+label", "sampled+label"):
        assert report["table"][run]["all"]["replies"] == 3  # the memory pair's two turns and one single turn
        assert report["table"][run]["all"]["empty"] == 0.0
    assert {reply["label"] for reply in report["replies"]["greedy+label"]} <= {"positive", "negative"}
    assert {reply["label"] for reply in report["replies"]["greedy"]} == {None}
    assert "in lang" in done.stdout and "restate" in done.stdout
