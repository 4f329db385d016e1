"""`edgeqwen heads`: the classification heads of a model file trained, so its roles use them without editing YAML."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import EdgeQwenError
from .guard import interrupt_note
from .options import ModelOption, PromptsOption, ThreadsOption, open_model


def heads(
    model: ModelOption = None,
    role: Annotated[Optional[list[str]], typer.Option(
        "--role", "-r", help="Train this classify role's head (repeat for more). Default: every role whose YAML names "
                             "training texts.")] = None,
    data: Annotated[Optional[Path], typer.Option(
        "--data",
        help="Labelled JSON Lines for one --role: text + label per line (text + route for a router role).")] = None,
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", help="Also write the results (accuracy with and without each head) to this JSON file.")] = None,
    prompts: PromptsOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Train classification heads for a model file (80 % of the texts; the other 20 % scored), written to \
<model>.heads/.

    The roles pick them up whenever that model runs. Run it after editing a role's prompt, for a model built \
elsewhere (`edgeqwen quantize` does it for you), or for your own classify role with --data.

    \b
    Examples:
      edgeqwen heads --model models/qwen1.5-0.5b-chat-q4_k_m.gguf          # sentiment and route
      edgeqwen heads --role sentiment                                      # after editing its prompt
      edgeqwen heads --prompts my_prompts --role topic --data topics.jsonl # your own role
    """
    from ..api import load_roles
    from ..training.model_heads import format_summary, plan_heads, train_model_heads

    jobs = plan_heads(load_roles(prompts), role or (), data)  # refused before the model loads
    eq = open_model(model, threads=threads, prompts=prompts)
    with interrupt_note("interrupted: heads finished before this are written; run the same command again for the rest"):
        results = train_model_heads(eq, jobs=jobs, log=lambda message: typer.echo(message, err=True))
    for line in format_summary(results):
        typer.echo(line)
    if json_out is not None:
        try:
            json_out.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            raise EdgeQwenError(f"{json_out}: cannot write the results: {error}") from None
