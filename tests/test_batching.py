"""Texts evaluated together, and heads that stop llama.cpp at their block: same answers, nothing left behind."""

from __future__ import annotations

import json

import numpy as np

from edgeqwen.engine import Engine
from edgeqwen.prompt_fit import fit_prompt, fixed_prefix

QUESTIONS = {"Can you help me plan a trip to Kyoto?", "你好，今天天气怎么样？", "What is the capital of Australia?",
             "帮我写一首关于秋天的诗。", "Tell me a joke about cats."}
TEXTS = [
    "The battery died after two days.", "Best pizza in town, friendly staff.", "物流很快，包装完好。",
    "房间太小了，隔音也很差。", "I would not recommend this hotel to anyone.", "这本书让我受益匪浅。",
    "Absolutely loved the soundtrack.", "客服态度恶劣，再也不买了。", "Can you help me plan a trip to Kyoto?",
    "你好，今天天气怎么样？", "Works exactly as described, great value.", "味道一般，价格偏贵。",
    "What is the capital of Australia?", "帮我写一首关于秋天的诗。", "The sequel is a tired copy of the original.",
    "屏幕很清晰，运行速度也快。", "Tell me a joke about cats.", "这部电影的剧情太拖沓了。",
]


def _prompt(eq, role_name, text):
    role = eq.roles[role_name]
    return fit_prompt(eq.engine, role, text, prefix=fixed_prefix(eq.engine, role))


def test_texts_classified_together_get_the_labels_they_get_one_at_a_time(eq):
    # A request has no sentiment: its sentiment is a near tie (0.50-0.51 seen) that another batch's
    # rounding may flip, so sentiment is held to the reviews and the router to every text.
    reviews = [text for text in TEXTS if text not in QUESTIONS]
    for role, texts in (("sentiment", reviews), ("route", TEXTS)):
        alone = [eq.classify(text, role) for text in texts]
        together = eq.classify_many(texts, role)
        assert [c.label for c in together] == [c.label for c in alone]
        assert max(abs(a.confidence - b.confidence) for a, b in zip(alone, together)) < 0.02
        assert together[0].timings["batch"] == len(texts)


def test_the_route_head_stops_llama_cpp_at_its_block(eq):
    classifier = eq.router._classifier  # the route role's head reads a middle block, alone
    assert classifier.head.layer is not None and classifier.head.blend == 1
    prompts = [_prompt(eq, eq.router.prompt.name, text).tokens for text in TEXTS[:3]]  # the prompt its head reads
    fixed = _prompt(eq, eq.router.prompt.name, TEXTS[0]).fixed
    stopped = eq.engine.evaluate_many(prompts, fixed, layers=[classifier.head.layer], logits=False)
    full = eq.engine.evaluate_many(prompts, fixed, layers=[classifier.head.layer], logits=True)
    for early, whole in zip(stopped, full):
        assert early.logits is None and whole.logits is not None
        rows = early.states[classifier.head.layer]
        assert rows.shape == whole.states[classifier.head.layer].shape and rows.shape[1] == eq.engine.n_embd
        assert np.allclose(rows, whole.states[classifier.head.layer], atol=1e-3)  # the blocks below ran alike


def test_rows_to_the_end_of_the_message_are_the_same_with_or_without_the_reply_header(eq):
    """What training reads (the whole prompt, for the logits too) is what a head that stops at the end
    of the user's message reads alone, where the reply header is never evaluated."""
    classifier, header = eq._classifier("sentiment"), eq.engine.reply_header_length()
    assert header == 5  # ChatML: <|im_end|> \n <|im_start|> assistant \n
    prompt = _prompt(eq, "sentiment", TEXTS[0])
    (alone,) = classifier.read_many([TEXTS[0]], [12], logits=False, to_message=True)
    assert eq.engine.tokens_evaluated == len(prompt.tokens) - prompt.fixed - header
    (whole,) = classifier.read_many([TEXTS[0]], [12], logits=True, to_message=True)
    (past,) = classifier.read_many([TEXTS[0]], [12], logits=False)
    assert alone.logits is None and whole.logits is not None
    assert np.allclose(alone.layers[12], whole.layers[12], rtol=1e-2, atol=1e-2)
    assert not np.allclose(alone.layers[12], past.layers[12], rtol=1e-2, atol=1e-2)


def test_cells_of_skipped_blocks_are_never_read(eq, model_path):
    """After a stopped evaluation, the input's tokens hold no cells: a full pass over the same prompt
    evaluates them afresh and matches a fresh engine (stale upper-block cells would not)."""
    prompt = _prompt(eq, eq.router.prompt.name, TEXTS[8])  # the prompt the route head reads
    eq.route(TEXTS[8])  # stopped after the head's block
    after_stop = eq.engine.next_token_logits(prompt.tokens, keep_prefix=prompt.fixed)
    assert eq.engine.tokens_evaluated == len(prompt.tokens) - prompt.fixed  # nothing of the input was reused
    fresh = Engine(model_path, n_ctx=512, prefix_budget=0).next_token_logits(prompt.tokens)
    top = np.argsort(fresh)[-20:]
    assert np.argmax(after_stop) == np.argmax(fresh) and np.max(np.abs(after_stop[top] - fresh[top])) < 0.5
    again = eq.route(TEXTS[8])
    assert again.task == eq.route(TEXTS[8]).task


def test_chat_after_classifications_is_unchanged(eq):
    greedy = {"temperature": 0.0, "max_tokens": 24}
    before = eq.conversation(sampling=greedy).reply("Name three colours of the rainbow.")
    eq.classify_many(TEXTS, "route")
    eq.classify_many(TEXTS, "sentiment")
    eq.route("你好")
    after = eq.conversation(sampling=greedy).reply("Name three colours of the rainbow.")
    assert before == after and before.strip()


def test_sentiment_file_in_batches_equals_one_at_a_time(invoke_model, tmp_path):
    """Reviews only: a text with no sentiment (a request for a poem) is a near tie, and near ties can
    flip with the rounding of a different batch (see docs/benchmarks.md)."""
    texts = [text for text in TEXTS if text not in QUESTIONS]
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                              for t in [*texts[:7], "   ", *texts[7:]]), encoding="utf-8")
    outputs = {}
    for size in ("1", "5"):
        out = tmp_path / f"out{size}.jsonl"
        done = invoke_model("sentiment", str(inputs), "-o", str(out), "--batch-size", size)
        assert done.returncode == 0, done.stderr
        outputs[size] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    one, five = outputs["1"], outputs["5"]
    assert [r["line"] for r in five] == list(range(1, len(texts) + 2))
    assert [(r["line"], r["label"], r["error"] is None) for r in five] == [(r["line"], r["label"],
                                                                            r["error"] is None) for r in one]
    assert five[7]["error"] and five[7]["label"] is None  # the blank line, reported in place
