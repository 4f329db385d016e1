"""`edgeqwen eval`: a classify role (or the router) scored on labelled JSONL: accuracy, F1, latency."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import settings
from .options import (
    CtxOption,
    DataArgument,
    JsonReportOption,
    KvCacheOption,
    LimitOption,
    ModelOption,
    PromptsOption,
    RoleOption,
    TaskOption,
    ThreadsOption,
    open_model,
    write_report,
)


def eval_command(
    data: DataArgument,
    task: TaskOption = "sentiment",
    role: RoleOption = None,
    json_out: JsonReportOption = None,
    compare: Annotated[bool, typer.Option("--compare", help=(
        "Also score the seed baselines on the same texts: the seed prompt (a reconstruction) or the rules "
        "router, and the role without its head."))] = False,
    limit: LimitOption = None,
    include_trained: Annotated[bool, typer.Option(
        "--include-trained", help="Keep texts the role's head was trained on (left out by default).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help=(
        "Texts evaluated together; 1: one at a time (same labels; latency per text is then a call's own)."))
    ] = settings.BATCH_SIZE,
    model: ModelOption = None,
    prompts: PromptsOption = None,
    threads: ThreadsOption = None,
    ctx: CtxOption = None,
    kv_cache: KvCacheOption = None,
) -> None:
    """Accuracy, per-class precision/recall/F1, confusion matrix, per-language split and latency of a classify role.

    \b
    Examples:
      edgeqwen eval sentiment_en_dev.jsonl sentiment_zh_dev.jsonl --compare
      edgeqwen eval router_en_dev.jsonl router_zh_dev.jsonl --task route --compare --json report.json
    Related: edgeqwen train-head (fit a head on labelled texts), edgeqwen chat-check (judge chat replies).
    """
    from ..api import check_choice, load_roles
    from ..evaluate import TASK_FIELDS, EvalOptions, check_gold, check_role, evaluate, format_report, read_data

    check_choice("--task", task, tuple(TASK_FIELDS))
    options = EvalOptions(data=list(data), task=task, role=role, compare=compare, limit=limit,
                          include_trained=include_trained, progress=True, batch_size=batch_size)
    items = read_data(options.data, task, limit)  # bad data fails before the model loads
    roles = load_roles(prompts)
    check_gold(items, task, roles[check_role(roles, task, role)])
    eq = open_model(model, ctx=ctx, threads=threads, prompts=prompts, kv_cache=kv_cache)
    report = evaluate(eq, options, items)
    typer.echo(format_report(report))
    write_report(json_out, report)

