"""One head trained for a classify role (`edgeqwen train-head`, `edgeqwen heads`): features read on a
stratified split of labelled texts, fitted (fit.py), written, and reported on the held-out part.

With `--train-fraction 0` the head is fitted on `--train-extra` texts only and every text of DATA is
held out: the way the shipped heads are trained (on texts written for training, never on dev sets).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..classifier import Classifier
from ..errors import InputError
from ..evaluate import DataError, EvalOptions, Item, Progress, check_gold, check_role, metrics
from ..gguf_info import output_matrix
from ..head import Head, blend_scores, model_heads_dir, prompt_fingerprint, save_head, text_key
from ..text import clean_text
from .fit import HiddenFromLogits, choose_blend, choose_l2, fit_logistic, split_items, unstandardize

READ_TOGETHER = 16  # texts evaluated in one call while reading training features


def train_head(eq: Any, options: EvalOptions, items: Sequence[Item], output: Path, train_fraction: float = 0.5,
               seed: int = 0, extra: Sequence[Item] = (), layer: int | None = None, choose_layer: bool = False,
               l2: float | None = None, to_message: bool = False) -> dict[str, Any]:
    """Fit a head for the role on a split of `items` (plus `extra`, always in the training part);
    report it and the label logits on the held-out part of `items` only.

    The head reads the final state (blended with the label logits at a weight chosen by CV), or with
    `layer` that block's output alone (head.layer_features; no blend, so llama.cpp can stop at that
    block). `choose_layer` picks the block by CV on the training part among every second one. `l2`
    fixes the penalty (chosen elsewhere, e.g. by leave-one-source-out validation) instead of CV. With
    `to_message` a block head reads the rows up to the end of the user's message only (Head.to_message).
    """
    if not 0 <= train_fraction < 1 or (train_fraction == 0 and not extra):
        raise InputError("--train-fraction must be between 0 and 1 (0: train on --train-extra only and score every "
                         "text of DATA)")
    if output.suffix != ".npz":
        raise InputError(f"{output}: a head file must end in .npz")
    blocks = eq.readable_layers
    if layer is not None and layer not in blocks:
        raise InputError(f"--layer must be between 0 and {blocks[-1]}: the model has {len(blocks) + 1} blocks, "
                         "and the last one's output is the final state (the default)")
    if to_message and layer is None and not choose_layer:
        raise InputError("--to-message is for a head that reads a block: give --layer N or --choose-layer")
    name = check_role(eq.roles, options.task, options.role)
    role = eq.roles[name]
    check_gold([*items, *extra], options.task, role)
    n_data = len(items)
    items = [*items, *extra]
    classifier = eq.classifier(role, use_head=False, for_head=True)
    labels = role.label_names
    # Gold values are route targets for task route: map them back to the role's labels.
    to_label = {(label.routes_to or label.name) if options.task == "route" else label.name: label.name
                for label in role.labels}
    y = np.array([labels.index(to_label[item.gold]) for item in items])
    train, held = split_items(items[:n_data], train_fraction, seed)
    train += list(range(n_data, len(items)))
    if len(held) == 0 or len(set(y[train])) < 2:
        raise DataError("too few labelled texts to split into a training and a held-out part")
    candidates = sorted({*blocks[2::2], *([layer] if layer is not None else [])}) if choose_layer else [layer]
    basis = HiddenFromLogits(output_matrix(eq.model_info.path)) if None in candidates else None
    x_by_layer, logit_scores, latencies = _read_features(classifier, items, candidates, basis, options.progress, name,
                                                         to_message)
    if classifier.prompt is not role:  # the head reads another role's prompt; the label logits need the role's own
        logit_scores[held] = _own_label_scores(eq, role, [items[i] for i in held])
    cv_layers = {}
    if choose_layer:
        cv_layers = {block: choose_l2(x_by_layer[block][train], y[train], len(labels), seed=seed)[1]
                     for block in candidates}
        # ties: the earlier block, cheaper
        layer = max(candidates, key=lambda block: (max(cv_layers[block].values()), -block))
    x = x_by_layer[layer]
    l2, cv = (l2, {}) if l2 is not None else choose_l2(x[train], y[train], len(labels), seed=seed)
    blend, cv_blend = (choose_blend(x[train], y[train], logit_scores[train], len(labels), l2, seed=seed)
                       if classifier.single_token and layer is None and classifier.prompt is role else (1.0, {}))
    w, b, mean, scale = fit_logistic(x[train], y[train], len(labels), l2)
    weight, bias = (unstandardize(w, b, mean, scale) if basis is None or layer is not None
                    else basis.fold(w, b, mean, scale))
    head = Head(
        labels=tuple(labels), weight=weight, bias=bias, blend=blend,
        model=eq.model_identity(), prompt_sha256=prompt_fingerprint(role), layer=layer, to_message=to_message,
        trained_on=frozenset(text_key(clean_text(items[i].text)) for i in train),
    )
    head_pred = np.argmax(blend_scores(((x[held] - mean) / scale) @ w.T + b, logit_scores[held], blend), axis=1)
    logit_pred = np.argmax(logit_scores[held], axis=1)
    to_gold = {label: gold for gold, label in to_label.items()}
    held_items = [items[i] for i in held]
    lat = [latencies[i] for i in held]
    mix = "" if blend == 1 else f", blended {blend:g} with the label logits"
    systems = [
        {"system": f"head (trained on {len(train)}, l2 {l2:g}{mix})",
         "description": f"{output}; logistic regression over {head.reads}",
         **metrics(held_items, [to_gold[labels[k]] for k in head_pred], lat, 0.0)},
        {"system": f"label logits of role '{name}'", "description": "the role without a head, same prompt, same texts",
         **metrics(held_items, [to_gold[labels[k]] for k in logit_pred], lat, 0.0)},
    ]
    validation = {s["system"]: {"accuracy": s["accuracy"],
                                "by_lang": {k: v["accuracy"] for k, v in s["by_lang"].items()}} for s in systems}
    cv_by_layer = {str(block): round(max(results.values()), 4) for block, results in cv_layers.items()}
    head.meta.update({"role": name, "task": options.task, "data": [str(p) for p in options.data], "extra": len(extra),
                      "seed": seed, "train_fraction": train_fraction, "n_train": len(train), "n_held_out": len(held),
                      "l2": l2,
                      "cv_accuracy": {str(k): round(v, 4) for k, v in cv.items()}, "cv_accuracy_by_layer": cv_by_layer,
                      "cv_blend_accuracy": {str(k): round(v, 4) for k, v in cv_blend.items()}, "held_out": validation})
    output.parent.mkdir(parents=True, exist_ok=True)
    save_head(output, head)
    return {
        "data": [str(p) for p in options.data], "task": options.task, "role": name, "model": eq.model_info.path.name,
        "model_path": str(eq.model_info.path), "n": len(held),
        "split": f"seed {seed}, {len(train) - len(extra)} texts for training (+{len(extra)} from --train-extra), "
                 f"{len(held)} held out (stratified by lang and gold)",
        "head": str(output), "reads": head.reads, "n_train": len(train), "layer": layer, "l2": l2, "blend": blend,
        "cv_accuracy": head.meta["cv_accuracy"],
        "cv_accuracy_by_layer": cv_by_layer, "cv_blend_accuracy": head.meta["cv_blend_accuracy"], "systems": systems,
    }


def how_roles_find(output: Path, model_path: str | Path) -> str:
    """How a role comes to use a head written to `output`, in one line for people."""
    if output.parent.resolve() == model_heads_dir(model_path).resolve():
        return f"roles naming  head: {output.name}  use it whenever this model runs"
    return f"name it in the role's YAML as  head: {output.name}"


def _own_label_scores(eq: Any, role: Any, items: Sequence[Item]) -> np.ndarray:
    """The label scores of `items` through the role's own prompt."""
    own = eq.classifier(role, use_head=False)
    texts = [item.text for item in items]
    return np.array([read.label_scores for first in range(0, len(texts), READ_TOGETHER)
                     for read in own.read_many(texts[first:first + READ_TOGETHER])])


def _read_features(classifier: Classifier, items: Sequence[Item], layers: list[int | None],
                   basis: HiddenFromLogits | None, progress: bool, name: str,
                   to_message: bool = False) -> tuple[dict[int | None, np.ndarray], np.ndarray, list[float]]:
    """Per candidate block (None: the final state, from the logits) a feature row per item; the
    items' label scores; the time per item."""
    blocks = [layer for layer in layers if layer is not None]
    rows: dict[int | None, list[np.ndarray]] = {layer: [] for layer in layers}
    logit_scores, latencies = [], []
    bar = Progress(len(items), progress)
    bar.describe(f"hidden states ({name})")
    try:
        for first in range(0, len(items), READ_TOGETHER):
            chunk = items[first : first + READ_TOGETHER]
            t0 = time.perf_counter()
            reads = classifier.read_many([item.text for item in chunk], blocks, to_message=to_message)
            latencies += [(time.perf_counter() - t0) * 1000 / len(chunk)] * len(chunk)
            for read in reads:
                for layer in layers:
                    rows[layer].append(basis.moments(read.logits) if layer is None else read.layers[layer])
                logit_scores.append(read.label_scores)
            bar.advance(len(chunk))
    finally:
        bar.close()
    x_by_layer = {layer: basis.hidden(np.array(r)) if layer is None else np.array(r) for layer, r in rows.items()}
    return x_by_layer, np.array(logit_scores), latencies
