"""Role files: validation errors name the file and the field; new files are new roles."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgeqwen.errors import RoleError
from edgeqwen.roles import default_prompts_dir, load_role, load_roles

from conftest import REPO
from conftest import VALID_ROLE as VALID


def test_shipped_roles_load():
    roles = load_roles()
    assert {"sentiment", "chat", "route"} <= set(roles)
    assert roles["sentiment"].label_names == ["positive", "negative"]
    assert roles["chat"].sampling.temperature == 0.7
    assert roles["chat"].sampling.top_p == 0.9
    assert roles["chat"].sampling.max_tokens == 256
    assert {label.routes_to for label in roles["route"].labels} == {"sentiment", "chat"}


@pytest.mark.parametrize(
    "text, field, message",
    [
        (VALID + "colour: red\n", "colour", "Extra inputs are not permitted"),
        (VALID.replace("system: Classify the topic.\n", ""), "system", "Field required"),
        (VALID.replace('template: "Text: {text}"', "template: Text"), "template", "placeholder {text}"),
        (VALID.replace("kind: classify", "kind: summarize"), "kind", "classify"),
        (VALID + "sampling: {temperature: hot}\n", "sampling.temperature", "valid number"),
        (VALID.replace("- name: politics", "- name: sports"), "(top level)", "duplicate label"),
        (VALID.replace("- name: politics", "- name: '<|im_end|>'"), "labels.1.name", "control tokens"),
        (VALID.replace("- name: politics", "- name: ''"), "labels.1.name", "non-empty"),
        (VALID.replace("  - name: politics\n", ""), "(top level)", "at least two labels"),
        (VALID + "examples:\n  - {text: hi, label: weather}\n", "(top level)", "examples.0.label"),
    ],
)
def test_validation_errors_name_file_and_field(write_role, text, field, message):
    path = write_role("topic", text)
    with pytest.raises(RoleError) as error:
        load_role(path)
    line = str(error.value)
    assert "\n" not in line
    assert str(path) in line
    assert f"field '{field}'" in line
    assert message in line


def test_invalid_yaml_names_file_and_line(write_role):
    path = write_role("broken", "kind: classify\nsystem: [unclosed\n")
    with pytest.raises(RoleError, match=r"broken\.yaml: invalid YAML \(line \d+\)"):
        load_role(path)


def test_reserved_role_name(write_role):
    path = write_role("auto", VALID)
    with pytest.raises(RoleError, match="role name 'auto'"):
        load_role(path)


def test_user_dir_adds_and_overrides(write_role, tmp_path):
    write_role("topic", VALID)
    write_role("chat", "kind: generate\nsystem: You are a pirate.\n")
    roles = load_roles(tmp_path)
    assert roles["topic"].label_names == ["sports", "politics"]
    assert roles["chat"].system == "You are a pirate."
    assert roles["sentiment"].source.endswith("sentiment.yaml")


def test_missing_prompts_dir(tmp_path):
    with pytest.raises(RoleError, match="prompts directory not found"):
        load_roles(tmp_path / "nope")


def test_prompt_assembly_puts_examples_in_the_fixed_prefix():
    role = load_roles()["sentiment"]
    messages = role.messages("great phone")
    assert messages[0] == {"role": "system", "content": role.system}
    assert messages[: len(role.prefix_messages())] == role.prefix_messages()
    assert messages[-1] == {"role": "user", "content": role.template.replace("{text}", "great phone")}


def test_default_roles_ship_inside_the_installed_package(tmp_path):
    """`pip install .` must carry prompts/ into the package: install to a folder, import from elsewhere."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(REPO)],
        check=True,
        capture_output=True,
    )
    code = "import edgeqwen.roles as r; print(r.default_prompts_dir()); print(sorted(r.load_roles()))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)}, capture_output=True, text=True,
        check=True
    ).stdout.splitlines()
    assert out[0].startswith(str(target))
    assert "'chat', 'contact', 'route', 'sentiment'" in out[1]
    assert default_prompts_dir().is_dir()


GUIDED_CHAT = """\
kind: generate
system: You are kind.
system_by_language: {en: Reply in English., zh: 请用中文回答。}
guidance:
  - role: sentiment
    label: negative
    min_confidence: 0.6
    system_by_language: {en: Say sorry first., zh: 先表示遗憾。}
    examples:
      - {lang: en, text: "The bus was late.", reply: "Sorry to hear that! Did you make it in time?"}
      - {lang: zh, text: "公交车晚点了。", reply: "真遗憾！你赶上了吗？"}
  - role: sentiment
    label: positive
    system: Share their joy.
"""


@pytest.mark.parametrize(
    "text, field, message",
    [
        (GUIDED_CHAT.replace("role: sentiment\n    label: negative", "role: mood\n    label: negative"),
         "guidance.0.role",
         "no classify role named 'mood'"),
        (GUIDED_CHAT.replace("role: sentiment\n    label: positive", "role: chat\n    label: positive"),
         "guidance.1.role",
         "no classify role named 'chat'"),
        (GUIDED_CHAT.replace("label: negative", "label: sad"), "guidance.0.label",
         "'sad' is not a label of role 'sentiment'"),
        (GUIDED_CHAT.replace("min_confidence: 0.6", "min_confidence: 1.5"), "guidance.0.min_confidence", "less than 1"),
        (GUIDED_CHAT.replace('reply: "真遗憾！你赶上了吗？"', "label: negative"), "(top level)",
         "guidance.0.examples.1.reply: required"),
        (GUIDED_CHAT.replace("{lang: en,", "{lang: fr,"), "guidance.0.examples.0.lang", "'en' or 'zh'"),
        (GUIDED_CHAT + "    template_by_language: {en: 'Reply to me.'}\n", "guidance.1.template_by_language",
         "placeholder {text}"),
        (GUIDED_CHAT.replace("    system: Share their joy.\n", "    reply_start: Yay\n"), "guidance.1.reply_start",
         "Extra inputs"),
        (GUIDED_CHAT.replace("    min_confidence: 0.6\n", "    avoid_input: {zh: 12}\n"), "guidance.0.avoid_input.zh",
         "less than or equal to 10"),
        (GUIDED_CHAT.replace("    min_confidence: 0.6\n", "    avoid_input: {fr: 1}\n"),
         "guidance.0.avoid_input.fr.[key]", "'en' or 'zh'"),
        (VALID + "guidance: [{role: sentiment, label: positive}]\n", "(top level)", "only a generate role"),
        (VALID + "examples: [{text: goal!, label: politics, lang: en}]\n", "(top level)", "examples.0.lang"),
    ],
)
def test_guidance_errors_name_file_and_field(write_role, tmp_path, text, field, message):
    write_role("chat", text)
    with pytest.raises(RoleError) as error:
        load_roles(tmp_path)
    line = str(error.value)
    assert "\n" not in line and str(tmp_path / "chat.yaml") in line
    assert f"field '{field}'" in line and message in line, line


def test_guidance_shapes_the_prompt_for_a_classified_text(write_role, tmp_path):
    write_role("chat", GUIDED_CHAT)
    chat = load_roles(tmp_path)["chat"]
    assert chat.guidance_for([("sentiment", "negative", 0.5)]) == []  # below min_confidence
    assert chat.guidance_for([("route", "negative", 0.9)]) == []  # another role's label
    negative = chat.guided(chat.guidance_for([("sentiment", "negative", 0.9)]))
    assert negative.prefix_messages("The soup was cold.") == [
        {"role": "system", "content": "Reply in English.\nSay sorry first."},
        {"role": "user", "content": "The bus was late."},
        {"role": "assistant", "content": "Sorry to hear that! Did you make it in time?"},
    ]
    zh_prefix = ["请用中文回答。\n先表示遗憾。", "公交车晚点了。", "真遗憾！你赶上了吗？"]
    assert [m["content"] for m in negative.prefix_messages("汤是凉的。")] == zh_prefix
    assert negative.messages("汤是凉的。")[-1] == {"role": "user", "content": "汤是凉的。"}
    positive = chat.guided(chat.guidance_for([("sentiment", "positive", 0.51)]))
    assert positive.system_for("Great soup!") == "Reply in English.\nShare their joy."  # one text for every language
    assert positive.system_for("😀") == "You are kind.\nShare their joy."
    assert chat.guided([]) is chat
    assert chat.prefix_messages("Hi") == [{"role": "system", "content": "Reply in English."}]


def test_shipped_chat_role_guides_replies_to_both_sentiment_labels():
    roles = load_roles()
    chat = roles["chat"]
    for label in roles["sentiment"].label_names:
        for text in ("The soup was cold.", "汤是凉的。"):
            entries = chat.guidance_for([("sentiment", label, 0.99)])
            assert entries and chat.guided(entries).system_for(text) != chat.system_for(text)


def test_guidance_template_wraps_the_message_and_its_examples_in_their_language(write_role, tmp_path):
    guided = GUIDED_CHAT.replace("    min_confidence: 0.6\n", "    template_by_language: {zh: '{text}（回应我）'}\n")
    write_role("chat", guided)
    chat = load_roles(tmp_path)["chat"]
    negative = chat.guided(chat.guidance_for([("sentiment", "negative", 0.9)]))
    assert negative.messages("汤是凉的。")[-1] == {"role": "user", "content": "汤是凉的。（回应我）"}
    assert [m["content"] for m in negative.prefix_messages("汤是凉的。")][1] == "公交车晚点了。（回应我）"
    assert negative.messages("The soup was cold.")[-1]["content"] == "The soup was cold."  # no English template
    assert chat.messages("汤是凉的。")[-1]["content"] == "汤是凉的。"  # unguided
