"""`edgeqwen train-head`: a classification head for one classify role fitted on labelled JSONL, reported on a
held-out part."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (
    CtxOption,
    DataArgument,
    JsonReportOption,
    KvCacheOption,
    ModelOption,
    PromptsOption,
    RoleOption,
    SeedOption,
    TaskOption,
    ThreadsOption,
    open_model,
    write_report,
)


def train_head(
    data: DataArgument,
    output: Annotated[Path, typer.Option("--output", "-o", help=(
        "The head file to write (.npz): beside a role's YAML (then `head: NAME.npz` in it), or in "
        "<model>.heads/ where the roles find it for that model."))],
    task: TaskOption = "sentiment",
    role: RoleOption = None,
    train_fraction: Annotated[float, typer.Option(
        "--train-fraction", help="Share of each (lang, label) group used for training; 0: --train-extra only.")] = 0.5,
    train_extra: Annotated[Optional[list[Path]], typer.Option(
        "--train-extra", help="More labelled JSONL, always in the training part (never scored).")] = None,
    seed: SeedOption = 0,
    layer: Annotated[Optional[int], typer.Option("--layer", min=0, help=(
        "Read transformer block N's output (mean over the input, and its last token) instead of the final "
        "state, so llama.cpp can stop after that block."))] = None,
    to_message: Annotated[bool, typer.Option("--to-message", help=(
        "With a block head: read the block's rows up to the end of the user's message, so the chat "
        "template's end of turn and reply header are never evaluated."))] = False,
    choose_layer: Annotated[bool, typer.Option(
        "--choose-layer", help="Pick the block by cross-validation on the training part (every second one).")] = False,
    l2: Annotated[Optional[float], typer.Option("--l2", min=0.0, help=(
        "This L2 penalty instead of one chosen by cross-validation (e.g. from scripts/validate_heads.py)."))] = None,
    json_out: JsonReportOption = None,
    model: ModelOption = None,
    prompts: PromptsOption = None,
    threads: ThreadsOption = None,
    ctx: CtxOption = None,
    kv_cache: KvCacheOption = None,
) -> None:
    """Fit a classification head for a classify role on a split of labelled texts; report it and the role's label \
logits on the held-out part.

    \b
    Examples:
      edgeqwen train-head router_*.jsonl --task route -o my_prompts/route.head.npz --choose-layer
      edgeqwen train-head my_texts.jsonl --task route -m models/x.gguf --train-fraction 0.8 -o \
models/x.heads/route.head.npz
      edgeqwen train-head dev.jsonl --train-fraction 0 --train-extra prompts/sentiment.train.jsonl \\
          -o prompts/sentiment.head.npz --layer 16 --l2 1
    (`edgeqwen heads` trains every shipped role's head for a model file in one go.)
    """
    from ..api import check_choice, load_roles
    from ..evaluate import TASK_FIELDS, EvalOptions, check_gold, check_role, format_report, read_data
    from ..training.head import how_roles_find
    from ..training.head import train_head as fit_head

    check_choice("--task", task, tuple(TASK_FIELDS))
    options = EvalOptions(data=list(data), task=task, role=role, progress=True)
    items = read_data(options.data, task)  # bad data fails before the model loads
    extra = read_data(train_extra, task) if train_extra else []
    roles = load_roles(prompts)
    check_gold([*items, *extra], task, roles[check_role(roles, task, role)])
    eq = open_model(model, ctx=ctx, threads=threads, prompts=prompts, kv_cache=kv_cache)
    report = fit_head(eq, options, items, output, train_fraction, seed, extra, layer, choose_layer, l2, to_message)
    typer.echo(format_report(report))
    typer.echo(f"\nhead written to {output}; {how_roles_find(output, report['model_path'])}")
    write_report(json_out, report)
