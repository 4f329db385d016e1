"""Routing: the rules strategy on its own examples, the llm strategy on clear cases."""

from __future__ import annotations

import pytest

from edgeqwen.router import Router, rules_route


@pytest.mark.parametrize(
    "text, expected",
    [
        ("你好", "chat"),  # short: small talk
        ("这个手机怎么样？", "chat"),  # a question
        ("这家餐厅的服务太差了，再也不会来了", "sentiment"),  # keyword 太差
        ("I really love the new design of this laptop", "sentiment"),  # keyword love
        ("Tell me about the history of Rome please", "chat"),  # no keyword
    ],
)
def test_rules_router(text, expected):
    assert rules_route(text) == expected
    assert Router("rules").route(text).task == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("这家酒店的早餐太难吃了，房间也很旧。", "sentiment"),
        ("The plot was predictable and the acting was wooden.", "sentiment"),
        ("你能帮我写一封请假邮件吗？", "chat"),
        ("How do I make a cup of green tea?", "chat"),
    ],
)
def test_llm_router_on_clear_cases(eq, text, expected):
    decision = eq.route(text)
    assert decision.task == expected and decision.strategy == "llm"
    assert 0.5 <= decision.confidence <= 1


def test_auto_routes_and_labels_a_review_from_one_evaluation(eq, monkeypatch):
    """The route head reads the sentiment role's prompt at the sentiment head's block: one kept prefix
    for both roles, and a review read once gives its route and its label."""
    router, sentiment = eq.router._classifier, eq._classifier("sentiment")
    assert router.prompt is sentiment.prompt is eq.roles["sentiment"] and router.shares_read_with(sentiment)
    text = "The battery died after two days and support never answered."
    alone_route, alone_label = eq.route(text), eq.sentiment(text)
    decodes = []
    run_batch = eq.engine.runtime.run_batch
    monkeypatch.setattr(eq.engine.runtime, "run_batch", lambda: decodes.append(1) or run_batch())
    result = eq.run(text, "auto", chat=False)
    assert len(decodes) == 1  # one llama_decode: the route role's prefix is the sentiment role's, already kept
    assert result.task == alone_route.task == "sentiment"
    assert result.sentiment.label == alone_label.label == "negative"
    assert abs(result.sentiment.confidence - alone_label.confidence) < 1e-3
    assert abs(result.route.confidence - alone_route.confidence) < 1e-3
    assert result.timings["sentiment_ms"] == 0.0 < result.timings["route_ms"]  # the one evaluation is counted once


def test_a_route_head_that_does_not_fit_falls_back_to_the_route_prompts_label_logits(tmp_path, model_path):
    from edgeqwen.classifier import Classifier
    from edgeqwen.engine import Engine
    from edgeqwen.roles import load_roles

    from conftest import REPO

    prompts = tmp_path / "prompts"
    prompts.mkdir()
    sentiment = (REPO / "prompts" / "sentiment.yaml").read_text(encoding="utf-8")
    (prompts / "sentiment.yaml").write_text(sentiment.replace("Answer with exactly one word", "Answer with one word"),
                                            encoding="utf-8")
    (prompts / "sentiment.train.jsonl").write_bytes((REPO / "prompts" / "sentiment.train.jsonl").read_bytes())
    (prompts / "sentiment.head.npz").write_bytes((REPO / "prompts" / "sentiment.head.npz").read_bytes())
    roles = load_roles(prompts)  # the route role now reads an edited sentiment prompt: its head no longer fits
    route = Classifier(Engine(model_path, n_ctx=512), roles["route"])
    assert route.head is None and route.prompt is roles["route"]  # its own prompt, decided by its label logits
    assert route.classify("How do I make a cup of green tea?").label == "question"


def test_an_unsure_router_answers_with_both_when_its_role_says_so(invoke_model, tmp_path, caplog):
    """abstain_below in the route role: below it, --task auto runs both roles, marked in --json."""
    import json
    import logging
    import shutil

    from conftest import REPO

    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for name in ("route.head.npz", "route.train.jsonl"):  # the role's head and the training texts it names
        shutil.copy(REPO / "prompts" / name, prompts)
    chat = (REPO / "prompts" / "chat.yaml").read_text(encoding="utf-8").replace("max_tokens: 256", "max_tokens: 16")
    (prompts / "chat.yaml").write_text(chat, encoding="utf-8")  # short replies: what is under test is the route
    route = (REPO / "prompts" / "route.yaml").read_text(encoding="utf-8")
    (prompts / "route.yaml").write_text(route + "abstain_below: 0.99999\n", encoding="utf-8")  # unsure of everything
    with caplog.at_level(logging.WARNING):
        done = invoke_model("run", "--json", "--prompts", str(prompts), "The soup was cold but the staff were lovely.")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["task"] == "both" and result["route"]["abstained"] is True
    assert result["label"] in ("positive", "negative") and result["reply"]
    # the head still fits: abstaining is not part of the prompt
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    # a confidence is never below 0.5
    (prompts / "route.yaml").write_text(route + "abstain_below: 0.5\n", encoding="utf-8")
    plain = json.loads(invoke_model("run", "--json", "--prompts", str(prompts), "How do I make green tea?").stdout)
    assert plain["task"] == "chat" and plain["route"]["abstained"] is False


def test_only_a_router_role_can_abstain(tmp_path):
    from edgeqwen.errors import RoleError
    from edgeqwen.roles import load_role

    path = tmp_path / "mood.yaml"
    path.write_text("kind: classify\nsystem: Mood?\nlabels: [{name: happy}, {name: sad}]\nabstain_below: 0.7\n",
                    encoding="utf-8")
    with pytest.raises(RoleError, match="abstain_below: only a router role"):
        load_role(path)
