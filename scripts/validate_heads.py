#!/usr/bin/env python3
"""Which head generalises to text from sources it never saw: leave-one-source-out validation (not a CI test).

For a classify role (sentiment, or the router with --task route), every text's features are read
once (cached in models/.validate-cache/): each candidate block's output (mean over the input's
tokens and the last token) and the final hidden state. Then, for each head configuration (block,
pooling, two blocks at once, the final state; the L2 penalty), two figures over the dev sets'
source groups:

- written -> source: fitted on the written training texts only (how the shipped heads are trained),
  scored on each dev source group; every group is unseen;
- leave one source out: fitted on the written texts plus every other dev group, scored on the group
  left out.

Each is reported as the mean over groups (each group counts once), the worst group and the errors
summed over the groups. Choose by these, never by a pooled dev score; a mean that rises while the
summed errors do not has gained a text or two in a small group (docs/evaluation.md).

    .venv/bin/python scripts/validate_heads.py --task route --train prompts/route.train.jsonl \
        --dev ../shared/data/router_en_dev.jsonl ../shared/data/router_zh_dev.jsonl [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
L2_GRID = (0.01, 0.1, 1.0)
POOLS = ("mean+last", "mean", "last")


def read_all(task: str, paths: list[Path], layers: list[int], threads: int | None, prompts: Path | None = None,
             to_message: bool = False) -> dict:
    """read_features of each file, joined in order (with the roles of `prompts`, e.g. a reworded prompt;
    with `to_message`, block rows up to the end of the user's message only)."""
    from edgeqwen.api import EdgeQwen

    eq = EdgeQwen(threads=threads, router="rules", prompts_dir=prompts)
    parts = [read_features(eq, task, path, layers, to_message) for path in paths]
    joined = {name: np.concatenate([p[name] for p in parts]) for name in parts[0] if name != "items"}
    return joined | {"items": [item for p in parts for item in p["items"]]}


def read_features(eq, task: str, path: Path, layers: list[int], to_message: bool = False) -> dict:
    """Features of every text of `path` for the task's role, from the cache when the same model,
    prompt, texts and layers were read before."""
    from edgeqwen.evaluate import read_data
    from edgeqwen.gguf_info import output_matrix
    from edgeqwen.head import prompt_fingerprint
    from edgeqwen.training.fit import HiddenFromLogits
    from edgeqwen.training.head import READ_TOGETHER

    items = read_data([path], task)
    role = eq.roles["route" if task == "route" else "sentiment"]
    key = hashlib.sha256(json.dumps([eq.model_info.path.name, prompt_fingerprint(role), layers, to_message,
                                     [i.text for i in items]], ensure_ascii=False).encode()).hexdigest()[:16]
    cache = REPO / "models" / ".validate-cache" / f"{task}-{key}.npz"
    if cache.is_file():
        with np.load(cache) as data:
            return {name: data[name] for name in data.files} | {"items": items}
    classifier = eq.classifier(role, use_head=False, for_head=True)
    basis = HiddenFromLogits(output_matrix(eq.model_info.path))
    rows = {layer: [] for layer in layers}
    moments, label_scores = [], []
    started = time.perf_counter()
    for first in range(0, len(items), READ_TOGETHER):
        for read in classifier.read_many([i.text for i in items[first:first + READ_TOGETHER]], layers,
                                         to_message=to_message):
            for layer in layers:
                rows[layer].append(read.layers[layer].astype(np.float32))
            moments.append(basis.moments(read.logits))
            label_scores.append(read.label_scores)
        done = min(first + READ_TOGETHER, len(items))
        print(f"\r  read {done}/{len(items)} ({done / (time.perf_counter() - started):.1f} texts/s)", end="",
              file=sys.stderr)
    print(file=sys.stderr)
    features = {f"block{layer}": np.array(r) for layer, r in rows.items()}
    features["final"] = basis.hidden(np.array(moments)).astype(np.float32)
    features["label_scores"] = np.array(label_scores)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **features)
    return features | {"items": items}


def configurations(features: dict, layers: list[int]) -> dict[str, np.ndarray]:
    n_embd = features["final"].shape[1]
    configs = {}
    for layer in layers:
        x = features[f"block{layer}"]
        configs[f"block {layer} mean+last"] = x
        configs[f"block {layer} mean"] = x[:, :n_embd]
        configs[f"block {layer} last"] = x[:, n_embd:]
    configs["final state"] = features["final"]
    return configs


SHRINKAGE_GRID = (0.01, 0.03, 0.1, 0.3, 0.6, 0.9)


def fit_lda(x: np.ndarray, y: np.ndarray, n_classes: int,
            shrinkage: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Linear discriminant analysis on standardised features, its within-class covariance shrunk
    toward a multiple of the identity (`shrinkage` 0: none, 1: the difference of the class means).
    Returns (weight, bias, mean, scale) like fit_logistic: linear, so it would fit the head file as is."""
    from edgeqwen.training.fit import standardise

    mean, scale, z = standardise(x)
    (weight, bias), = _discriminants(z, y, n_classes, (shrinkage,))
    return weight, bias, mean, scale


def choose_shrinkage(x: np.ndarray, y: np.ndarray, n_classes: int, grid=SHRINKAGE_GRID, folds: int = 5,
                     seed: int = 0) -> tuple[float, dict[float, float]]:
    """Pick LDA's shrinkage by k-fold cross-validation on the training split only (ties: more shrinkage)."""
    from edgeqwen.training.fit import fold_parts, standardise

    parts = fold_parts(len(y), folds, seed)
    correct = dict.fromkeys(grid, 0)
    for k, held in enumerate(parts):
        train = np.concatenate([p for j, p in enumerate(parts) if j != k])
        mean, scale, z = standardise(x[train])
        for shrinkage, (w, b) in zip(grid, _discriminants(z, y[train], n_classes, grid)):
            correct[shrinkage] += int((np.argmax(((x[held] - mean) / scale) @ w.T + b, axis=1) == y[held]).sum())
    results = {shrinkage: count / len(y) for shrinkage, count in correct.items()}
    return max(results, key=lambda s: (results[s], s)), results


def _discriminants(z: np.ndarray, y: np.ndarray, n_classes: int, shrinkages) -> list[tuple[np.ndarray, np.ndarray]]:
    """LDA's (weight, bias) for each shrinkage; one eigendecomposition of the covariance serves them all."""
    means = np.stack([z[y == k].mean(axis=0) for k in range(n_classes)])
    centred = z - means[y]
    values, vectors = np.linalg.eigh(centred.T @ centred / len(y))
    projected = means @ vectors
    log_prior = np.log(np.bincount(y, minlength=n_classes) / len(y))
    found = []
    for shrinkage in shrinkages:
        w = (projected / ((1 - shrinkage) * values + shrinkage * values.mean())) @ vectors.T
        found.append((w, log_prior - 0.5 * (w * means).sum(axis=1)))
    return found


def fit_and_score(x_train, y_train, x_test, n_classes: int, l2: float | None) -> np.ndarray:
    """Labels for x_test from a logistic regression at `l2`, or (l2 None) shrinkage LDA with its
    shrinkage chosen by 5-fold CV on x_train (tried for the router; not shipped: docs/evaluation.md)."""
    from edgeqwen.training.fit import fit_logistic, predict_logistic

    if l2 is None:
        w, b, mean, scale = fit_lda(x_train, y_train, n_classes, choose_shrinkage(x_train, y_train, n_classes)[0])
    else:
        w, b, mean, scale = fit_logistic(x_train, y_train, n_classes, l2, steps=250)
    return predict_logistic(x_test, w, b, mean, scale)


def validate(x: np.ndarray, y: np.ndarray, written: np.ndarray, groups: np.ndarray, n_classes: int,
             l2: float | None) -> dict:
    names = sorted(set(groups[~written]))
    pred = fit_and_score(x[written], y[written], x[~written], n_classes, l2)
    dev_groups = groups[~written]
    dev_y = y[~written]
    unseen = {g: float((pred[dev_groups == g] == dev_y[dev_groups == g]).mean()) for g in names}
    pooled = float((pred == dev_y).mean())
    loso, loso_errors = {}, 0
    for g in names:
        train = written | ((groups != g) & ~written)
        test = groups == g
        right = fit_and_score(x[train], y[train], x[test], n_classes, l2) == y[test]
        loso[g] = float(right.mean())
        loso_errors += int((~right).sum())
    # Errors summed over the groups beside the group means: a mean can rise on a text or two of a
    # 4-text group while the large groups lose more.
    return {"l2": l2, "unseen": unseen, "loso": loso, "pooled_dev": pooled,
            "unseen_errors": int((pred != dev_y).sum()), "loso_errors": loso_errors}


def summary(by_group: dict[str, float]) -> tuple[float, float, str]:
    worst = min(by_group, key=by_group.get)
    return float(np.mean(list(by_group.values()))), by_group[worst], worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=("sentiment", "route"), required=True)
    parser.add_argument("--train", type=Path, nargs="+", required=True, help="written training texts")
    parser.add_argument("--dev", type=Path, nargs="+", required=True, help="dev sets with a source field")
    parser.add_argument("--layers", default="6,8,10,12,14,16,18,20,22")
    parser.add_argument("--l2", default=",".join(map(str, L2_GRID)))
    parser.add_argument("--method", choices=("logistic", "lda"), default="logistic",
                        help="lda: shrinkage LDA, its shrinkage chosen by CV on each fit's training rows (--l2 unused)")
    parser.add_argument("--pairs", type=int, default=3, help="also try every pair of the best N single blocks together")
    parser.add_argument("--only",
                        help="a regular expression: score only the configurations it matches (e.g. 'block (10|14) ')")
    parser.add_argument("--train-limit", type=int,
                        help="use only the first N written texts (e.g. the file before lines were added)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--prompts", type=Path,
                        help="read features with the roles of this folder (the prompt is a feature extractor too)")
    parser.add_argument("--to-message", action="store_true",
                        help="blocks read up to the end of the user's message (Head.to_message)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    layers = [int(v) for v in args.layers.split(",")]
    features = read_all(args.task, [*args.train, *args.dev], layers, args.threads, args.prompts, args.to_message)
    items = features.pop("items")
    n_written = sum(1 for i in items if any(i.where.startswith(str(p)) for p in args.train))
    written = np.arange(len(items)) < n_written
    if args.train_limit is not None and args.train_limit < n_written:  # drop the written texts past the limit
        keep = ~written | (np.arange(len(items)) < args.train_limit)
        items = [item for item, k in zip(items, keep) if k]
        features = {name: value[keep] for name, value in features.items()}
        n_written = args.train_limit
        written = np.arange(len(items)) < n_written
    golds = sorted({i.gold for i in items})
    y = np.array([golds.index(i.gold) for i in items])
    from edgeqwen.evaluate import source_group

    groups = np.array(["written" if w else source_group(i.source or "unknown") for i, w in zip(items, written)])
    print(f"{args.task}: {n_written} written texts, {len(items) - n_written} dev texts in "
          f"{len(set(groups[~written]))} source groups: " + ", ".join(f"{g} {int((groups == g).sum())}"
                                                                      for g in sorted(set(groups[~written]))))
    configs = configurations(features, layers)
    results = []
    l2s = [None] if args.method == "lda" else [float(v) for v in args.l2.split(",")]

    def run(name: str, x: np.ndarray) -> None:
        for l2 in l2s:
            r = validate(x, y, written, groups, len(golds), l2) | {"config": name}
            results.append(r)
            u, l_ = summary(r["unseen"]), summary(r["loso"])
            print(f"{name:26} {'lda' if l2 is None else f'l2 {l2}':<8} written->source mean {u[0]:.1%} worst "
                  f"{u[1]:.1%} ({u[2]}), "
                  f"{r['unseen_errors']} errors | LOSO mean {l_[0]:.1%} worst {l_[1]:.1%} ({l_[2]}), "
                  f"{r['loso_errors']} errors | "
                  f"pooled dev {r['pooled_dev']:.1%}", flush=True)

    for name, x in configs.items():
        if args.only is None or re.search(args.only, name):
            run(name, x)
    singles = sorted({r["config"] for r in results if r["config"].endswith("mean+last")
                      and r["config"].startswith("block")},
                     key=lambda c: -max(summary(r["loso"])[0] for r in results if r["config"] == c))[: args.pairs]
    for i, a in enumerate(singles):
        for b in singles[i + 1:]:
            run(f"{a.split()[1]}+{b.split()[1]} mean+last", np.hstack([configs[a], configs[b]]))
    best = max(results, key=lambda r: summary(r["loso"])[0])
    fit = "lda" if best["l2"] is None else f"l2 {best['l2']}"
    print(f"\nbest by LOSO mean: {best['config']} {fit}: LOSO mean {summary(best['loso'])[0]:.1%}, "
          f"worst {summary(best['loso'])[1]:.1%}, {best['loso_errors']} errors; written->source mean "
          f"{summary(best['unseen'])[0]:.1%}, {best['unseen_errors']} errors")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
