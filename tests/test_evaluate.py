"""`edgeqwen eval` and classification heads: data checks, metrics, head files, and the real model."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeqwen import head as head_module
from edgeqwen.classifier import Classifier
from edgeqwen.engine import Engine
from edgeqwen.errors import InputError, RoleError
from edgeqwen.evaluate import DataError, EvalOptions, Item, abstain_band, format_report, metrics, read_data
from edgeqwen.gguf_info import output_matrix
from edgeqwen.head import Head, load_head, model_heads_dir, model_identity, prompt_fingerprint, save_head
from edgeqwen.prompt_fit import fixed_prefix
from edgeqwen.roles import load_role, load_roles
from edgeqwen.training.fit import HiddenFromLogits, choose_blend, fit_logistic, predict_logistic, split_items
from edgeqwen.training.head import train_head

from conftest import REPO

SENTIMENT_ROWS = [
    {"text": "I love this phone, the screen is gorgeous.", "label": "positive", "lang": "en"},
    {"text": "Broke after two days. Total waste of money.", "label": "negative", "lang": "en"},
    {"text": "房间干净，服务热情，下次还来。", "label": "positive", "lang": "zh"},
    {"text": "质量太差，客服也不理人，非常失望。", "label": "negative", "lang": "zh"},
]
ROUTE_ROWS = [
    {"text": "The pasta was cold and the waiter ignored us all evening.", "route": "sentiment", "lang": "en"},
    {"text": "Can you help me write a birthday message for my sister?", "route": "chat", "lang": "en"},
    {"text": "这本书写得很无聊，翻了几页就看不下去了。", "route": "sentiment", "lang": "zh"},
    {"text": "你能给我讲一个关于猫的笑话吗？", "route": "chat", "lang": "zh"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


# -- data and metrics, no model ---------------------------------------------------------------


def test_read_data_reads_gold_field_and_lang(tmp_path):
    items = read_data([write_jsonl(tmp_path / "s.jsonl", SENTIMENT_ROWS)], "sentiment")
    assert [i.gold for i in items] == ["positive", "negative", "positive", "negative"]
    assert [i.lang for i in items] == ["en", "en", "zh", "zh"]
    assert read_data([tmp_path / "s.jsonl"], "sentiment", limit=2)[-1].gold == "negative"
    assert len(read_data([write_jsonl(tmp_path / "r.jsonl", ROUTE_ROWS)], "route")) == 4


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "fine", "label": "positive"}\n{"text": "oops", "label": \n', "bad.jsonl:2: invalid JSON"),
        ('{"text": "fine", "label": "positive"}\n\n{"text": "no label"}\n', "bad.jsonl:3: field 'label' missing"),
        ('["text", "label"]\n', "bad.jsonl:1: each line must be a JSON object"),
        ("\n\n", "no labelled lines"),
    ],
)
def test_bad_data_is_one_line_with_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_data([path], "sentiment")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_missing_data_file(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        read_data([tmp_path / "nope.jsonl"], "sentiment")


def test_metrics_precision_recall_confusion_and_languages():
    items = [Item("a", "pos", "en", "f:1"), Item("b", "pos", "en", "f:2"), Item("c", "neg", "zh", "f:3"),
             Item("d", "neg", "zh", "f:4")]
    m = metrics(items, ["pos", "neg", "neg", "neg"], [10, 20, 30, 40], wall_s=2.0)
    assert m["accuracy"] == 0.75 and m["n"] == 4
    assert m["per_class"]["pos"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert m["per_class"]["neg"]["precision"] == 0.6667 and m["per_class"]["neg"]["recall"] == 1.0
    assert m["confusion"] == {"neg": {"neg": 2, "pos": 0}, "pos": {"neg": 1, "pos": 1}}
    assert m["by_lang"]["en"]["accuracy"] == 0.5 and m["by_lang"]["zh"]["accuracy"] == 1.0
    assert m["p50_ms"] == 25.0 and m["throughput_per_s"] == 2.0


def test_accuracy_per_source_with_its_mean_and_worst():
    items = [Item("a", "pos", "en", "f:1", "imdb"), Item("b", "neg", "en", "f:2", "imdb"),
             Item("c", "neg", "zh", "f:3", "hotel"), Item("d", "pos", "en", "f:4", "tweets"),
             Item("e", "pos", "en", "f:5")]
    m = metrics(items, ["pos", "neg", "pos", "neg", "pos"], [1] * 5, wall_s=1.0)
    assert m["by_source"] == {"hotel": {"n": 1, "accuracy": 0.0}, "imdb": {"n": 2, "accuracy": 1.0},
                              "tweets": {"n": 1, "accuracy": 0.0}}
    assert m["source_summary"] == {"sources": 3, "mean": 0.3333, "worst": "hotel", "worst_accuracy": 0.0}
    report = {"data": ["d.jsonl"], "n": 5, "task": "sentiment", "role": "sentiment", "model": "m.gguf",
              "systems": [{"system": "s", "description": "d", **m}]}
    text = format_report(report)
    assert "by source (3): mean 33.3%, worst 0.0% (hotel)" in text
    assert metrics(items[4:], ["pos"], [1], 1.0)["source_summary"] is None  # no source field: no section


def test_abstain_band_counts_the_unsure_and_scores_the_rest():
    items = [Item(str(i), "chat", "en", "") for i in range(4)]
    band = abstain_band(items, ["chat", "chat", "sentiment", "chat"], [0.55, 0.95, 0.65, 0.85])
    by_threshold = {b["below"]: b for b in band}
    assert by_threshold[0.6] == {"below": 0.6, "share": 0.25, "accuracy_outside": 0.6667}
    assert by_threshold[0.7] == {"below": 0.7, "share": 0.5, "accuracy_outside": 1.0}


def test_split_is_stratified_fixed_and_disjoint():
    items = [Item(str(i), "ab"[i % 2], "en" if i < 20 else "zh", "") for i in range(40)]
    train, held = split_items(items, 0.5, seed=0)
    assert (train, held) == split_items(items, 0.5, seed=0)
    assert not set(train) & set(held) and len(train) + len(held) == 40
    for lang in ("en", "zh"):
        for gold in "ab":
            assert sum(1 for i in train if items[i].lang == lang and items[i].gold == gold) == 5


def test_split_with_fraction_zero_holds_everything_out():
    items = [Item(str(i), "ab"[i % 2], "en", "") for i in range(10)]
    assert split_items(items, 0.0, seed=0) == ([], list(range(10)))


def test_train_fraction_zero_needs_train_extra(tmp_path):
    items = read_data([write_jsonl(tmp_path / "r.jsonl", ROUTE_ROWS)], "route")
    options = EvalOptions(data=[tmp_path / "r.jsonl"], task="route", progress=False)
    for fraction in (0.0, 1.0, -0.1):  # refused before the model is touched
        with pytest.raises(InputError, match="--train-fraction"):
            train_head(None, options, items, tmp_path / "h.npz", train_fraction=fraction)


def test_shipped_training_texts_are_labelled_and_balanced():
    """The heads' training texts (written for edgeqwen, never taken from dev sets) read as eval data."""
    for name, task, golds in (("sentiment.train.jsonl", "sentiment", {"positive", "negative"}),
                              ("route.train.jsonl", "route", {"sentiment", "chat"})):
        items = read_data([REPO / "prompts" / name], task)
        for lang in ("en", "zh"):
            counts = [sum(1 for i in items if i.lang == lang and i.gold == gold) for gold in golds]
            # route: its sentiment side was extended (docs/evaluation.md)
            assert min(counts) >= 100 and max(counts) <= 1.6 * min(counts), (name, lang, counts)


def test_logistic_regression_learns_a_separable_problem():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 20))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    w, b, mean, scale = fit_logistic(x[:300], y[:300], 2, l2=0.001)
    assert (predict_logistic(x[300:], w, b, mean, scale) == y[300:]).mean() >= 0.9



def test_hidden_state_is_recovered_from_logits_and_a_head_folds_into_them():
    rng = np.random.default_rng(2)
    output = rng.normal(size=(500, 12)).astype(np.float32)
    hidden = rng.normal(size=(40, 12))
    logits = hidden @ output.T
    basis = HiddenFromLogits(output, chunk=64)
    recovered = basis.hidden(np.array([basis.moments(row) for row in logits]))
    assert np.allclose(recovered, hidden, atol=1e-3)
    y = (hidden[:, 0] > 0).astype(int)
    w, b, mean, scale = fit_logistic(recovered, y, 2, l2=0.01)
    weight, bias = basis.fold(w, b, mean, scale)
    assert np.allclose(logits @ weight.T + bias, ((recovered - mean) / scale) @ w.T + b, atol=1e-3)


def test_blend_weight_follows_the_better_scorer():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 10))
    y = (x[:, 0] > 0).astype(int)
    assert choose_blend(x, y, rng.normal(size=(300, 2)), 2, l2=0.01)[0] >= 0.75  # label scores are noise
    telling = np.stack([-x[:, 0], x[:, 0]], axis=1) * 10
    assert choose_blend(rng.normal(size=(300, 10)), y, telling, 2, l2=0.01)[0] <= 0.25  # the head's input is noise

# -- head files and role validation ------------------------------------------------------------


def make_head(n_vocab=8, labels=("review", "question"), model=None, prompt="x", blend=0.75, layer=None) -> Head:
    return Head(tuple(labels), np.ones((len(labels), n_vocab)), np.zeros(len(labels)), blend,
                model or {"name": "m", "n_vocab": n_vocab}, prompt, layer=layer, trained_on=frozenset({"abc"}),
                meta={"note": "测试"})


def test_head_file_round_trip_and_broken_files(tmp_path):
    path = tmp_path / "h.npz"
    save_head(path, make_head())
    loaded = load_head(path)
    assert loaded.labels == ("review", "question") and loaded.trained_on == {"abc"} and loaded.meta == {"note": "测试"}
    assert loaded.blend == 0.75 and loaded.layer is None
    save_head(path, make_head(layer=7))
    assert load_head(path).layer == 7
    assert loaded.reordered(["question", "review"]).labels == ("question", "review")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(RoleError, match="not a valid head file"):
        load_head(tmp_path / "broken.npz")
    with pytest.raises(RoleError, match="head file not found"):
        load_head(tmp_path / "missing.npz")


ROLE = """kind: classify
system: Review or question?
template: "Message: {text}"
labels:
  - {name: review, routes_to: sentiment}
  - {name: question, routes_to: chat}
"""


@pytest.mark.parametrize(
    "extra, message",
    [("head: missing.npz\n", "head file not found"), ("head: ../h.npz\n", "name of a .npz file"),
     ("head: h.txt\n", "name of a .npz file")],
)
def test_role_head_field_is_validated(write_role, extra, message):
    path = write_role("topic", ROLE + extra)
    with pytest.raises(RoleError) as error:
        load_role(path)
    assert "field 'head'" in str(error.value) and message in str(error.value)


def test_generate_role_cannot_have_a_head(write_role, tmp_path):
    save_head(tmp_path / "h.npz", make_head())
    path = write_role("talk", "kind: generate\nsystem: Chat.\nhead: h.npz\n")
    with pytest.raises(RoleError, match="only a classify role can have a head"):
        load_role(path)


# -- the real model -----------------------------------------------------------------------------


def test_shipped_route_head_fits_the_standin_model(eq):
    role = eq.roles["route"]
    assert role.head, "prompts/route.yaml names its head file"
    classifier = Classifier(eq.engine, role)
    assert classifier.head is not None, "the shipped head was trained on the stand-in model and the shipped prompt"
    assert 0 < classifier.head.layer < eq.engine.n_layer - 1  # it reads a middle block
    for text, target in [("这家酒店的早餐太难吃了，房间也很旧。", "sentiment"),
                         ("How do I make a cup of green tea?", "chat")]:
        result = classifier.classify(text)
        assert role.label(result.label).routes_to == target
        assert abs(sum(result.scores.values()) - 1) < 1e-6



def test_a_head_file_of_format_2_still_loads_as_a_final_state_head(tmp_path):
    path = tmp_path / "old.npz"
    save_head(path, make_head())
    with np.load(path) as data:
        fields = {key: data[key] for key in data.files if key != "layer"}
    np.savez(path, **{**fields, "format": np.array(2)})
    assert load_head(path).layer is None


def test_standin_logits_are_its_output_layer_times_a_hidden_state(eq):
    basis = HiddenFromLogits(output_matrix(eq.engine.info.path))
    assert basis.output.shape == (eq.engine.n_vocab, eq.engine.n_embd)
    logits = eq.engine.next_token_logits(eq.engine.chat_tokens([{"role": "user", "content": "hello there"}]))
    rebuilt = basis.output @ basis.hidden(basis.moments(logits)[None])[0]
    # llama.cpp rounds the hidden state to 8 bits
    assert np.linalg.norm(rebuilt - logits) / np.linalg.norm(logits) < 0.05

def test_trained_head_is_used_and_a_mismatched_one_falls_back(eq, tmp_path, caplog):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    role_path = prompts / "kind.yaml"
    role_path.write_text(ROLE, encoding="utf-8")
    rows = ROUTE_ROWS + [
        {"text": "Worst hotel I have ever stayed in.", "route": "sentiment", "lang": "en"},
        {"text": "What's the weather like on Mars?", "route": "chat", "lang": "en"},
        {"text": "外卖送得很快，味道也不错。", "route": "sentiment", "lang": "zh"},
        {"text": "帮我把这句话翻译成英文。", "route": "chat", "lang": "zh"},
    ]
    data = write_jsonl(tmp_path / "r.jsonl", rows)
    roles = load_roles(prompts)
    eq_roles, eq.roles = eq.roles, roles
    try:
        options = EvalOptions(data=[data], task="route", role="kind", progress=False)
        extra = [Item("Lovely staff and a spotless room.", "sentiment", "en", "x:1"),
                 Item("你会下棋吗？", "chat", "zh", "x:2")]
        report = train_head(eq, options, read_data([data], "route"), prompts / "kind.head.npz", extra=extra)
    finally:
        eq.roles = eq_roles
    assert report["n"] == 4 and len(report["systems"]) == 2  # scored on the held-out half only, never on extra
    saved = load_head(prompts / "kind.head.npz")
    assert saved.weight.shape == (2, eq.engine.n_vocab) and len(saved.trained_on) == 6 and saved.meta["extra"] == 2
    assert 0 <= saved.blend <= 1 and report["blend"] == saved.blend
    assert saved.model == model_identity(eq.engine)

    role_path.write_text(ROLE + "head: kind.head.npz\n", encoding="utf-8")
    role = load_role(role_path)
    assert prompt_fingerprint(role) == saved.prompt_sha256  # the head field itself is not part of the prompt
    classifier = Classifier(eq.engine, role)
    assert classifier.head is not None
    assert classifier.classify("The soup was salty and the bread was stale.").label in ("review", "question")

    # Trained for another model: never applied, one warning, label logits instead.
    other = load_head(prompts / "kind.head.npz")
    save_head(prompts / "kind.head.npz", Head(other.labels, np.ones((2, 64)), np.zeros(2), 1.0,
                                              {**other.model, "n_vocab": 64, "name": "other"}, other.prompt_sha256))
    head_module._warned.clear()
    with caplog.at_level(logging.WARNING, logger="edgeqwen.head"):
        first = Classifier(eq.engine, role)
        second = Classifier(eq.engine, role)
    assert first.head is None and second.head is None
    warnings = [r.getMessage() for r in caplog.records if "head not used" in r.getMessage()]
    assert len(warnings) == 1 and "another model" in warnings[0]
    assert first.classify("The soup was salty and the bread was stale.").label in ("review", "question")

    # Prompt edited after training: also a fallback.
    shutil.copy(role_path, role_path.with_suffix(".bak"))
    save_head(prompts / "kind.head.npz", saved)
    role_path.write_text(ROLE.replace("Review or question?",
                                      "Is it a review or a question?") + "head: kind.head.npz\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="edgeqwen.head"):
        assert Classifier(eq.engine, load_role(role_path)).head is None
    assert any("prompt changed" in r.getMessage() for r in caplog.records)



def test_a_head_trained_for_a_model_file_is_found_beside_it(eq, model_path, tmp_path, caplog):
    """`edgeqwen heads --model x.gguf` writes x.heads/NAME.npz: used for that file without editing the role,
    ahead of the role's own head; another model file keeps the role's head (here: unusable, warned)."""
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "kind.yaml").write_text(ROLE + "head: kind.head.npz\n", encoding="utf-8")
    save_head(prompts / "kind.head.npz", make_head(n_vocab=64, model={"name": "other", "n_vocab": 64}))
    model = tmp_path / "my-model.gguf"
    model.symlink_to(model_path.resolve())  # the stand-in under another name, as a model built by make quantize
    roles = load_roles(prompts)
    rows = ROUTE_ROWS + [
        {"text": "Worst hotel I have ever stayed in.", "route": "sentiment", "lang": "en"},
        {"text": "帮我把这句话翻译成英文。", "route": "chat", "lang": "zh"},
    ]
    data = write_jsonl(tmp_path / "r.jsonl", rows)
    eq_roles, eq.roles = eq.roles, roles
    try:
        options = EvalOptions(data=[data], task="route", role="kind", progress=False)
        train_head(eq, options, read_data([data], "route"), model_heads_dir(model) / "kind.head.npz")
    finally:
        eq.roles = eq_roles
    assert (tmp_path / "my-model.heads" / "kind.head.npz").is_file()
    head_module._warned.clear()
    with caplog.at_level(logging.WARNING, logger="edgeqwen.head"):
        assert Classifier(Engine(model, n_ctx=256), roles["kind"]).head is not None
        assert Classifier(eq.engine, roles["kind"]).head is None
    warnings = [r.getMessage() for r in caplog.records if "head not used" in r.getMessage()]
    assert (len(warnings) == 1 and "another model" in warnings[0]
            and f"edgeqwen heads --model {eq.engine.info.path} --role kind --data" in warnings[0])

# -- the command, in-process --------------------------------------------------------------------


def test_eval_sentiment_with_compare_writes_json(invoke_model, tmp_path):
    data = write_jsonl(tmp_path / "s.jsonl", SENTIMENT_ROWS)
    out = tmp_path / "report.json"
    done = invoke_model("eval", str(data), "--task", "sentiment", "--compare", "--json", str(out))
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "seed prompt (reconstruction)" in text and "confusion" in text and "precision" in text
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["n"] == 4 and report["role"] == "sentiment"
    names = [s["system"] for s in report["systems"]]
    assert names[0] == "edgeqwen role 'sentiment'" and "seed prompt (reconstruction)" in names
    ours = report["systems"][0]
    assert set(ours["by_lang"]) == {"en", "zh"} and ours["accuracy"] >= 0.75
    assert {"p50_ms", "p90_ms", "throughput_per_s", "per_class", "confusion", "macro_f1"} <= set(ours)
    assert set(ours["per_class"]) == {"positive", "negative"}


def test_eval_route_compares_the_rules_router(invoke_model, tmp_path):
    data = write_jsonl(tmp_path / "r.jsonl", ROUTE_ROWS)
    out = tmp_path / "route.json"
    done = invoke_model("eval", str(data), "--task", "route", "--compare", "--limit", "3", "--json", str(out),
                        "--include-trained")
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    names = [s["system"] for s in report["systems"]]
    assert report["n"] == 3 and "seed rule (rules router)" in names
    assert set(report["systems"][0]["per_class"]) <= {"sentiment", "chat"}
    band = report["systems"][0]["abstain_band"]  # what an abstain_below in the route role would do
    assert [b["below"] for b in band] == [0.6, 0.7, 0.8, 0.9] and all(0 <= b["share"] <= 1 for b in band)
    assert "if the router abstained below" in done.stdout


@pytest.mark.parametrize(
    "args, content, message, code",
    [
        (["--task", "sentiment"], '{"text": "ok", "label": "positive"}\n{bad json}\n', "d.jsonl:2: invalid JSON", 2),
        (["--task", "sentiment", "--role", "nosuchrole"], '{"text": "ok", "label": "positive"}\n',
         "no role named 'nosuchrole'", 1),
        (["--task", "sentiment", "--role", "chat"], '{"text": "ok", "label": "positive"}\n', "generate role", 1),
        (["--task", "topic"], '{"text": "ok", "label": "positive"}\n', "unknown --task 'topic'", 2),
        (["--task", "sentiment"], '{"text": "ok", "label": "neutral"}\n',
         "d.jsonl:1: label 'neutral' is not one of", 2),
    ],
)
def test_eval_bad_input_is_one_line(invoke, tmp_path, args, content, message, code):
    data = tmp_path / "d.jsonl"
    data.write_text(content, encoding="utf-8")
    done = invoke("eval", str(data), *args)
    err = done.stderr.strip()
    assert done.returncode == code, err
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_eval_missing_file(invoke, tmp_path):
    done = invoke("eval", str(tmp_path / "missing.jsonl"))
    assert done.returncode == 2 and "missing.jsonl: data file not found" in done.stderr


@pytest.mark.parametrize("to_message", [False, True])
def test_a_head_over_a_middle_block_is_trained_saved_and_used(eq, tmp_path, to_message):
    """--layer: the head reads a block's output (--to-message: up to the end of the user's message);
    training and use see the same numbers."""
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "kind.yaml").write_text(ROLE, encoding="utf-8")
    data = write_jsonl(tmp_path / "r.jsonl", ROUTE_ROWS * 2)
    eq_roles, eq.roles = eq.roles, load_roles(prompts)
    try:
        options = EvalOptions(data=[data], task="route", role="kind", progress=False)
        with pytest.raises(InputError, match="--layer must be between 0 and"):
            train_head(eq, options, read_data([data], "route"), prompts / "kind.head.npz", layer=eq.engine.n_layer - 1)
        with pytest.raises(InputError, match="--to-message is for a head that reads a block"):
            train_head(eq, options, read_data([data], "route"), prompts / "kind.head.npz", to_message=True)
        report = train_head(eq, options, read_data([data], "route"), prompts / "kind.head.npz", layer=6,
                            to_message=to_message)
    finally:
        eq.roles = eq_roles
    saved = load_head(prompts / "kind.head.npz")
    assert (saved.layer == 6 == report["layer"] and saved.weight.shape == (2, 2 * eq.engine.n_embd)
            and saved.to_message == to_message)
    (prompts / "kind.yaml").write_text(ROLE + "head: kind.head.npz\n", encoding="utf-8")
    classifier = Classifier(eq.engine, load_role(prompts / "kind.yaml"))
    assert classifier.head is not None and classifier.head.layer == 6 and classifier.head.to_message == to_message
    (read,) = classifier.read_many([ROUTE_ROWS[0]["text"]], layers=[6], logits=False, to_message=to_message)
    expected = classifier.head.scores(read.layers[6], read.label_scores)
    result = classifier.classify(ROUTE_ROWS[0]["text"])
    assert result.label == classifier.role.label_names[int(np.argmax(expected))]
    header = eq.engine.reply_header_length() if to_message else 0  # not evaluated when the head stops before it
    assert (eq.engine.tokens_evaluated
            == result.timings["prompt_tokens"] - len(fixed_prefix(eq.engine, classifier.role)) - header)
    probabilities = np.exp(expected - expected.max()) / np.exp(expected - expected.max()).sum()
    assert np.allclose([result.scores[name] for name in classifier.role.label_names], probabilities, atol=1e-5)


def test_head_layer_out_of_range_is_one_line(invoke_model, tmp_path):
    data = write_jsonl(tmp_path / "r.jsonl", ROUTE_ROWS)
    result = invoke_model("train-head", str(data), "--task", "route", "-o", str(tmp_path / "h.npz"), "--layer", "99",
                          "--train-fraction", "0.5")
    err = result.stderr
    assert result.returncode == 2 and "Traceback" not in err
    assert "--layer must be between 0 and 22" in err and len(err.strip().splitlines()) == 1
