"""`edgeqwen sentiment FILE`: every text of a file classified, with a progress bar, resumable; on one machine or a
Ray cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import settings
from .guard import interrupt_note
from .options import (
    ActorsPerNodeOption,
    CtxOption,
    ModelOption,
    ModelSha256Option,
    PromptsOption,
    RayAddressOption,
    RayFlag,
    ThreadsOption,
    open_model,
    ray_module,
    ray_options,
)

ActorsOption = Annotated[Optional[int], typer.Option(
    "--actors", min=1, help="With --ray: model copies (Ray actors) in all. Default: as many as the cluster holds.")]


def sentiment(
    inputs: Annotated[Path, typer.Argument(
        help="JSONL (a \"text\" field per line), CSV (a \"text\" column, else the first) or plain text (one input per "
        "line).")],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write results here: .jsonl or .csv. Default: JSONL on stdout.")] = None,
    resume: Annotated[bool, typer.Option("--resume",
                                         help="Continue an interrupted run: skip inputs already in --output.")] = False,
    role: Annotated[str, typer.Option("--role", help="Any classify role.")] = "sentiment",
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1,
        help="Texts evaluated together; 1: one at a time (same labels, slower).")] = settings.BATCH_SIZE,
    model: ModelOption = None,
    threads: ThreadsOption = None,
    ctx: CtxOption = None,
    prompts: PromptsOption = None,
    ray: RayFlag = False,
    ray_address: RayAddressOption = None,
    actors: ActorsOption = None,
    actors_per_node: ActorsPerNodeOption = None,
    model_sha256: ModelSha256Option = None,
) -> None:
    """Classify every text of a file, with a progress bar; results are flushed as they come, so Ctrl-C loses nothing.

    \b
    Examples:
      edgeqwen sentiment reviews.csv -o labels.csv
      edgeqwen sentiment reviews.jsonl -o labels.jsonl --resume   # after an interruption
      edgeqwen sentiment reviews.jsonl -o labels.jsonl --ray --threads 2          # a Ray cluster (docs/ray.md)
    """
    from tqdm import tqdm

    from ..batch import classify_file, count_inputs

    on_ray = ray_options(
        ray or ray_address is not None, address=ray_address, copies=actors, copies_flag="--actors",
        actors_per_node=actors_per_node,
        model_sha256=model_sha256, model=model, threads=threads, ctx=ctx, prompts=prompts,
    )
    cluster = ray_module("batch") if on_ray else None
    total = count_inputs(inputs)
    eq = None if on_ray else open_model(model, ctx=ctx, threads=threads, prompts=prompts)
    note = f"interrupted: results so far are in {output or 'stdout'}" + (" (continue with --resume)" if output else "")
    with interrupt_note(note), tqdm(total=total, unit="text", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        common = {"resume": resume, "stdout": sys.stdout, "on_progress": lambda n: bar.update(n - bar.n),
                  "batch_size": batch_size}
        if cluster is not None:
            summary = cluster.classify_file_on_ray(inputs, output, on_ray, role=role, **common)
        else:
            summary = classify_file(lambda texts: eq.classify_many(texts, role), inputs, output, **common)
    typer.echo(f"{summary.done} classified ({summary.skipped} already done) in {summary.seconds:.1f} s: "
               f"{summary.texts_per_second:.1f} texts/s", err=True)
