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
