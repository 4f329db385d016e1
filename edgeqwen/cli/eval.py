"""`edgeqwen eval`: a classify role scored on labelled JSONL (accuracy, F1, latency), or a head trained for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import settings
from ..errors import EdgeQwenError
from .options import CtxOption, KvCacheOption, ModelOption, PromptsOption, ThreadsOption, fail, interrupted, status


def eval_command(
    data: Annotated[list[Path], typer.Argument(help="Labelled JSON Lines file(s): text + label (sentiment) or text + route (route); optional lang.")],
    task: Annotated[str, typer.Option("--task", "-t", help="sentiment: gold field 'label' (any classify role); route: gold field 'route' (a router role); chat: prompts (lang, turns) whose replies are judged.")] = "sentiment",
    role: Annotated[Optional[str], typer.Option("--role", "-r", help="Classify role to score. Default: sentiment, or route for --task route.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the whole report (all metrics, every system) to this JSON file.")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Also score the seed baselines on the same texts: the seed prompt (a reconstruction) or the rules router, and the role without its head.")] = False,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the first N texts.")] = None,
    include_trained: Annotated[bool, typer.Option("--include-trained", help="Keep texts the role's head was trained on (left out by default).")] = False,
    train_head: Annotated[Optional[Path], typer.Option("--train-head", help="Train a classification head for the role on a split of DATA and write it here (.npz); reports the held-out part.")] = None,
    train_fraction: Annotated[float, typer.Option("--train-fraction", help="With --train-head: share of each (lang, label) group used for training.")] = 0.5,
    train_extra: Annotated[Optional[list[Path]], typer.Option("--train-extra", help="With --train-head: more labelled JSONL, always in the training part (never scored).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="With --train-head: the split's random seed; with --task chat: the sampler's.")] = 0,
    head_layer: Annotated[Optional[int], typer.Option("--head-layer", min=0, help="With --train-head: read transformer block N's output (mean over the input, and its last token) alone instead of the final state, so llama.cpp can stop after that block.")] = None,
    head_to_message: Annotated[bool, typer.Option("--head-to-message", help="With a block head: read the block's rows up to the end of the user's message (the role template's last token), so the chat template's end of turn and reply header are never evaluated.")] = False,
    choose_layer: Annotated[bool, typer.Option("--choose-layer", help="With --train-head: pick the block by cross-validation on the training part (every second block).")] = False,
    head_l2: Annotated[Optional[float], typer.Option("--head-l2", min=0.0, help="With --train-head: this L2 penalty instead of one chosen by cross-validation (e.g. chosen by scripts/validate_heads.py).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Texts a classify role evaluates together; 1: one at a time (same labels; latency per text is then a call's own).")] = settings.BATCH_SIZE,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", min=1, help="With --task chat: cap each reply (default: the role's max_tokens).")] = None,
    sampling: Annotated[str, typer.Option("--sampling", help="With --task chat: greedy, sampled (the role's own settings) or both.")] = "both",
    model: ModelOption = None,
    prompts: PromptsOption = None,
    threads: ThreadsOption = None,
    ctx: CtxOption = None,
    kv_cache: KvCacheOption = None,
) -> None:
    """Accuracy, per-class precision/recall/F1, confusion matrix, per-language split and latency of a classify role.

    \b
    Examples:
      edgeqwen eval sentiment_en_dev.jsonl sentiment_zh_dev.jsonl --task sentiment --compare
      edgeqwen eval router_en_dev.jsonl router_zh_dev.jsonl --task route --compare --json report.json
      edgeqwen eval router_*.jsonl --task route --train-head my_prompts/route.head.npz --choose-layer
      edgeqwen eval prompts/route.train.jsonl --task route -m models/x.gguf --train-fraction 0.8 --train-head models/x.heads/route.head.npz
      edgeqwen eval scripts/data/chat.eval.jsonl --task chat --json chat-report.json
    """
    from ..api import check_choice
    from ..evaluate import TASK_FIELDS

    try:
        check_choice("--task", task, (*TASK_FIELDS, "chat"))
    except EdgeQwenError as error:
        fail(error)
    if task == "chat":
        _chat(data, json_out, limit, max_tokens, sampling, seed, model, prompts, threads, ctx)
        return
    from ..api import EdgeQwen
    from ..evaluate import EvalOptions, check_role, evaluate, format_report, read_data
    from ..head_training import train_head as fit_head
    from ..roles import load_roles

    options = EvalOptions(data=list(data), task=task, role=role, compare=compare, limit=limit,
                          include_trained=include_trained, progress=True, batch_size=batch_size)
    try:
        items = read_data(options.data, task, limit)  # bad data fails before the model loads
        check_role(load_roles(prompts), task, role)
        status("loading model…")
        eq = EdgeQwen(model, n_ctx=ctx, threads=threads, prompts_dir=prompts, router="rules", kv_cache=kv_cache)
        if train_head is not None:
            extra = read_data(train_extra, task) if train_extra else []
            report = fit_head(eq, options, items, train_head, train_fraction, seed, extra, head_layer, choose_layer, head_l2, head_to_message)
        else:
            report = evaluate(eq, options, items)
    except EdgeQwenError as error:
        fail(error)
    except KeyboardInterrupt:
        interrupted()
    typer.echo(format_report(report))
    if train_head is not None:
        typer.echo(f"\nhead written to {train_head}; {_head_hint(train_head, report['model_path'])}")
    if json_out is not None:
        _write_json(json_out, report)


def _head_hint(path: Path, model_path: str) -> str:
    from ..head import model_heads_dir

    if path.parent.resolve() == model_heads_dir(model_path).resolve():
        return f"roles naming  head: {path.name}  use it whenever this model runs"
    return f"name it in the role's YAML as  head: {path.name}"


def _chat(data: list[Path], json_out: Path | None, limit: int | None, max_tokens: int | None, sampling: str, seed: int,
          model: Path | None, prompts: Path | None, threads: int | None, ctx: int | None) -> None:
    from ..api import EdgeQwen, check_choice
    from ..chat_check import MODES, format_report, read_prompts, run_chat_check
    from ..evaluate import Progress

    try:
        modes = MODES if check_choice("--sampling", sampling, (*MODES, "both")) == "both" else (sampling,)
        items = read_prompts(data, limit)
        status("loading model…")
        eq = EdgeQwen(model, n_ctx=ctx, threads=threads, prompts_dir=prompts, router="rules")
        bar = Progress(len(modes) * sum(len(item.turns) for item in items), enabled=True)
        try:
            result = run_chat_check(eq, items, modes=modes, max_tokens=max_tokens, seed=seed, on_reply=bar.advance)
        finally:
            bar.close()
    except EdgeQwenError as error:
        fail(error)
    except KeyboardInterrupt:
        interrupted()
    typer.echo(f"data: {', '.join(map(str, data))}  ({len(items)} prompts, model {eq.engine.info.path.name}, role chat)")
    typer.echo(format_report(result))
    if json_out is not None:
        _write_json(json_out, {"data": [str(p) for p in data], "model": eq.engine.info.path.name, **result})


def _write_json(path: Path, report: dict) -> None:
    try:
        path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    except OSError as error:
        fail(EdgeQwenError(f"{path}: cannot write the report: {error}"))
