"""Hostile role files: one-line errors naming file and field, and a bounded fuzz run (hypothesis) of the
YAML loader, the prompt renderer and the grammar builder: no YAML yields a grammar llama.cpp could
choke on. (tests/test_roles.py has the basic validation cases.)"""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeqwen.errors import GrammarError, RoleError
from edgeqwen.grammar import check_grammar, grammar_literals, label_grammar, label_problem
from edgeqwen.roles import Role, load_role, load_roles

from conftest import VALID_ROLE as VALID
from conftest import console_script


def one_line_error(path, field: str | None, fragment: str) -> str:
    with pytest.raises(RoleError) as error:
        load_role(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and fragment in message, message
    if field is not None:
        assert f"field '{field}'" in message, message
    return message


@pytest.mark.parametrize(
    "text, field, fragment",
    [
        (VALID.replace("- name: politics", '- name: "bad\\x07bell"'), "labels.1.name", "control characters"),
        (VALID.replace("- name: politics", '- name: "two\\nlines"'), "labels.1.name", "control characters"),
        (VALID.replace("- name: politics", '- name: "mid\\x85dle"'), "labels.1.name", "control characters"),
        (VALID.replace("- name: politics", '- name: " padded "'), "labels.1.name", "whitespace"),
        (VALID.replace("- name: politics", "- name: " + "x" * 65), "labels.1.name", "at most 64"),
        (VALID.replace("- name: politics", "- name: 42"), "labels.1.name", "valid string"),
        (VALID.replace("- name: politics", "- name: null"), "labels.1.name", "valid string"),
        (VALID.replace("- name: politics", "- name: '<|endoftext|>'"), "labels.1.name", "control tokens"),
        (VALID.replace("- name: politics", "- name: 'x<|im_start|>y'"), "labels.1.name", "control tokens"),
        (VALID.replace("- name: politics", "- name: 'half <|'"), "labels.1.name", "control tokens"),
        (VALID.replace("- name: politics", '- name: "a\\ud800b"'), "labels.1.name", "surrogate"),
        (VALID.replace("- name: politics", "- {name: politics, colour: red}"), "labels.1.colour", "Extra inputs"),
        (VALID.replace("labels:\n  - name: sports\n  - name: politics\n", "labels: sports\n"), "labels", "valid list"),
        (VALID.replace('template: "Text: {text}"', 'template: "Text: {txt}"'), "template", "{text}"),
        (VALID.replace('template: "Text: {text}"', "template: ''"), "template", "{text}"),
        (VALID + "sampling: {max_tokens: 0}\n", "sampling.max_tokens", "greater than or equal"),
        (VALID + "sampling: {top_p: 7}\n", "sampling.top_p", "less than or equal"),
        (VALID + "calibration: always\n", "calibration", "none"),
        (VALID + "name: other\n", "name", "named after its file"),
        ("kind: generate\nsystem: hi\nlabels: [{name: a}, {name: b}]\n", "(top level)", "no labels"),
        ("kind: generate\nsystem: hi\nexamples: [{text: hi}]\n", "(top level)", "reply"),
    ],
)
def test_more_validation_errors_name_file_and_field(write_role, text, field, fragment):
    one_line_error(write_role("topic", text), field, fragment)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("kind: classify\nsystem: [unclosed\n", "invalid YAML (line"),
        ("kind: classify\n\tsystem: tab\n", "invalid YAML"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("plain scalar\n", "must be a YAML mapping"),
        ("", "must be a YAML mapping"),
        ("--- {kind: classify}\n--- {kind: generate}\n", "invalid YAML"),
        ("kind: !!python/object/apply:os.system ['echo owned']\nsystem: x\n", "invalid YAML"),
    ],
)
def test_bad_yaml_is_one_line_naming_the_file(write_role, text, fragment):
    one_line_error(write_role("broken", text), None, fragment)


def test_non_utf8_role_file(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes(VALID.encode() + b"description: caf\xe9\n")
    one_line_error(path, None, "cannot read")


def test_yaml_alias_bomb_is_refused_quickly(write_role):
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    for i in range(1, 9):
        bomb += f"{'abcdefghi'[i]}: &{'abcdefghi'[i]} [" + ",".join([f"*{'abcdefghi'[i - 1]}"] * 9) + "]\n"
    bomb += "kind: classify\nsystem: *i\nlabels: *i\n"
    one_line_error(write_role("bomb", bomb), None, "field")


@pytest.mark.parametrize("bad_name", ["Topic", "auto", "both", "rules", "llm", "has space", "x" * 41, "émoji"])
def test_bad_role_file_names(tmp_path, bad_name):
    path = tmp_path / f"{bad_name}.yaml"
    path.write_text(VALID, encoding="utf-8")
    one_line_error(path, None, "role name")


def test_role_name_clash_between_yaml_and_yml(tmp_path):
    (tmp_path / "topic.yaml").write_text(VALID, encoding="utf-8")
    (tmp_path / "topic.yml").write_text(VALID, encoding="utf-8")
    with pytest.raises(RoleError) as error:
        load_roles(tmp_path)
    message = str(error.value)
    assert "\n" not in message and "clashes" in message and "topic.yml" in message and "topic.yaml" in message


def test_routes_to_a_missing_role_names_the_field(write_role, tmp_path):
    write_role("topic", VALID.replace("- name: politics", "- {name: politics, routes_to: nowhere}"))
    with pytest.raises(RoleError, match=r"topic\.yaml: field 'labels\.1\.routes_to': no role named 'nowhere'"):
        load_roles(tmp_path)


@pytest.mark.parametrize("target", ["nowhere", "topic", "chat"])  # missing, itself, a generate role
def test_a_head_reads_only_another_classify_roles_prompt(write_role, tmp_path, target):
    write_role("topic", VALID + f"head_reads_prompt_of: {target}\n")
    with pytest.raises(RoleError,
                       match=rf"topic\.yaml: field 'head_reads_prompt_of': '{target}' must be another classify role"):
        load_roles(tmp_path)


def test_cli_reports_a_bad_label_in_one_line(invoke, tmp_path):
    (tmp_path / "topic.yaml").write_text(VALID.replace("- name: politics", "- name: '<|im_end|>'"), encoding="utf-8")
    for command in (["roles"], ["run", "--task", "sentiment", "hello"]):
        done = invoke(*command, "--prompts", str(tmp_path))
        stderr = done.stderr
        assert done.returncode == 1 and stderr.count("\n") == 1, stderr
        assert "topic.yaml: field 'labels.1.name'" in stderr and "Traceback" not in stderr


# A label can be plain text to the YAML check and still a control token of the model: Qwen2.5's
# <tool_call> (an added token, which llama.cpp matches even in text tokenized without special tokens).
# Refused when the roles meet the model, naming the file and the field.
CONTROL_TOKEN_LABELS = [("<tool_call>", "is"), ("</tool_call>", "is"), ("call <tool_call> now", "contains")]


def control_token_role(directory, label: str):
    path = directory / "topic.yaml"
    path.write_text(VALID.replace("- name: politics", f"- name: '{label}'"), encoding="utf-8")
    return path


@pytest.mark.parametrize("label, verb", CONTROL_TOKEN_LABELS)
def test_label_that_is_a_control_token_is_refused_when_edgeqwen_loads(tmp_path, model_path, label, verb):
    from edgeqwen import EdgeQwen

    path = control_token_role(tmp_path, label)
    load_roles(tmp_path)  # the role file alone is valid: the model decides
    with pytest.raises(RoleError) as error:
        EdgeQwen(model_path, n_ctx=256, prompts_dir=tmp_path, router="rules", prefix_cache=False)
    message = str(error.value)
    assert "\n" not in message, message
    assert message == (f"{path}: field 'labels.1.name': label {label!r} {verb} a control token of this model; "
                       "pick plain words")


def test_control_token_labels_by_the_model_tokenizer(eq):
    from edgeqwen.classifier import Classifier, check_labels, label_token_problem

    engine = eq.engine
    for label, verb in [*CONTROL_TOKEN_LABELS, ("<|fim_prefix|>", "is"), ("<|im_end|>", "is")]:
        assert label_token_problem(engine, label) == f"{verb} a control token of this model", label
    for label in ["positive", "正面", "tool_call", "<tool_call", "<think>", "[PAD]", "a < b > c"]:
        assert label_token_problem(engine, label) is None, label
    check_labels(engine, eq.roles.values())  # the shipped roles pass
    role = Role(name="topic", source="x/topic.yaml", kind="classify", system="s",
                labels=[{"name": "a"}, {"name": "</tool_call>"}])
    with pytest.raises(RoleError,
                       match=r"^x/topic\.yaml: field 'labels\.1\.name': label '</tool_call>' is a control token"):
        Classifier(engine, role)  # also when a Classifier is built directly


def test_cli_refuses_a_control_token_label_in_one_line(model_path, tmp_path):
    """The console script, as a user runs it: llama.cpp has loaded, so its own stderr must stay silent too."""
    path = control_token_role(tmp_path, "<tool_call>")
    env = {**os.environ, "EDGEQWEN_MODEL": str(model_path)}
    done = subprocess.run([console_script(), "run", "--task", "sentiment", "--ctx", "256", "--prompts", str(tmp_path),
                           "hello"],
                          capture_output=True, env=env, timeout=300)
    stderr = done.stderr.decode()
    assert done.returncode == 1 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert stderr == (f"error: {path}: field 'labels.1.name': label '<tool_call>' is a control token of this model; "
                      "pick plain words\n")
    assert done.stdout == b""


# --------------------------------------------------------------------------- fuzz: YAML -> role -> prompt -> grammar

HOSTILE_STRINGS = ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "<tool_call>", "{text}", "{}", "\\", '"', "'", "|",
                   "::=",
                   "root ::= x", "\x00", "\x07", "\u2028", "\u202e", "\ud800", "😀", "正面", " ", "", "a" * 70, "\n",
                   "\t"]
scalar = st.one_of(st.text(st.characters(codec=None, exclude_categories=()), max_size=12),
                   st.sampled_from(HOSTILE_STRINGS),
                   st.integers(-5, 10**6), st.floats(allow_nan=True), st.booleans(), st.none())
string = st.one_of(st.text(max_size=12), st.sampled_from(HOSTILE_STRINGS),
                   st.lists(st.sampled_from(HOSTILE_STRINGS), max_size=4).map("".join))
label = st.one_of(st.fixed_dictionaries({"name": string},
                                        optional={"display": string, "routes_to": scalar, "extra": scalar}), scalar)
role_doc = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.one_of(st.sampled_from(["classify", "generate"]), scalar),
        "system": st.one_of(string, scalar),
        "template": st.one_of(string.map(lambda s: f"{s}{{text}}{s}"), string),
        "labels": st.lists(label, max_size=5),
        "examples": st.lists(st.fixed_dictionaries({"text": string}, optional={"label": string, "reply": string}),
                             max_size=3),
        "calibration": st.sampled_from(["none", "content_free", "other"]),
        "sampling": st.dictionaries(st.sampled_from(["temperature", "top_p", "top_k", "max_tokens", "seed", "bogus"]),
                                    scalar, max_size=3),
        "description": string,
        "unknown_key": scalar,
    },
)
raw_yaml = st.one_of(
    role_doc.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=200),
    st.lists(st.sampled_from(["kind: classify\n", "system: x\n", "labels:\n", "  - name: a\n", "  - name: b\n", "- ",
                              ": ", "&a ", "*a ",
                              "!!binary ", "{", "[", '"', "\t", "? ", "%YAML 1.1\n", "---\n",
                              "<|im_end|>"]), max_size=12).map("".join),
)


@settings(max_examples=int(400 * float(os.environ.get("EDGEQWEN_HOSTILE_SCALE", "1"))), deadline=None,
          derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(source=raw_yaml, text=st.text(st.characters(codec=None, exclude_categories=()), max_size=30))
def test_fuzz_yaml_loader_renderer_and_grammar(tmp_path, source, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(source, encoding="utf-8", errors="surrogatepass")
    try:
        role = load_role(path)
    except RoleError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(str(path)), message
        return
    assert isinstance(role, Role)
    messages = role.messages(text, [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}])
    assert all(isinstance(m["content"], str) for m in messages)
    assert role.user_message(text).count(text) >= role.template.count("{text}")
    if role.kind == "classify":
        # Every label a role file can declare makes a grammar that passes the check that guards
        # Engine.constrained_choice, round-trips exactly, and is valid UTF-8 for llama.cpp.
        grammar = label_grammar(role.label_names)
        check_grammar(grammar, role.label_names)
        assert grammar_literals(grammar) == role.label_names
        grammar.encode("utf-8")
        assert all(label_problem(name) is None for name in role.label_names)


@settings(max_examples=int(300 * float(os.environ.get("EDGEQWEN_HOSTILE_SCALE", "1"))), deadline=None,
          derandomize=True, database=None)
@given(grammar=st.one_of(st.text(max_size=60),
                         st.lists(st.sampled_from(['root ::= ', '"a"', " | ", '"', "\\", "\\n", "<|im_end|>", "b",
                                                   "::=", "\x00", "(", ")*"]), max_size=10).map("".join)))
def test_fuzz_check_grammar_accepts_only_label_grammars(grammar):
    try:
        check_grammar(grammar)
    except GrammarError as error:
        assert "\n" not in str(error)
        return
    literals = grammar_literals(grammar)  # accepted: then it is exactly a label grammar of clean literals
    assert literals and all(label_problem(literal) is None for literal in literals)
    assert label_grammar(literals) == grammar
