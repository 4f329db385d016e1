"""`edgeqwen quantize`: a Hugging Face checkpoint fetched, converted, quantized and verified into a GGUF."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import settings
from .guard import interrupt_note


def quantize(
    repo: Annotated[str, typer.Option(
        "--repo", help="Hugging Face repo (a Qwen1.5 / Qwen2 / Qwen2.5 checkpoint).")] = settings.QUANTIZE_REPO,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch, tag or commit. Default: main.")] = None,
    local_dir: Annotated[Optional[Path], typer.Option(
        "--local-dir", help="Use this folder instead of the Hub: the repo's files, or a Hugging Face cache.")] = None,
    qtype: Annotated[str, typer.Option(
        "--type", "-q", help=f"{settings.QUANT_TYPE} (default), Q4_0, Q5_K_M, Q8_0 or F16.")] = settings.QUANT_TYPE,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Output GGUF. Default: models/<repo name>-<type>.gguf.")] = None,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, help="CPU threads. Default: all for quantizing, physical cores for verifying.")] = None,
    keep_unquantized: Annotated[bool, typer.Option(
        "--keep-unquantized", help="Also keep the unquantized GGUF beside the output.")] = False,
    verify: Annotated[bool, typer.Option(
        "--verify/--no-verify", help="Compare next-token distributions with the unquantized GGUF.")] = True,
    heads: Annotated[bool, typer.Option(
        "--heads/--no-heads", help="Train the classification heads of the shipped roles for the new model (edgeqwen "
                                   "heads), so it is ready to use.")] = True,
    smoke: Annotated[bool, typer.Option(
        "--smoke/--no-smoke", help="Run the sentiment role on a few clear examples afterwards.")] = True,
) -> None:
    """Build a ready GGUF from a Hugging Face checkpoint: fetch, convert (no torch), quantize, verify, train the heads.

    \b
    Examples:
      edgeqwen quantize                                   # Qwen/Qwen1.5-0.5B-Chat -> \
models/qwen1.5-0.5b-chat-q4_k_m.gguf
      edgeqwen quantize --type Q8_0 --repo Qwen/Qwen1.5-0.5B
      edgeqwen quantize --local-dir ~/Qwen1.5-0.5B-Chat   # no network: a folder with the repo's files
    """
    from ..build import build_model, interrupted_state
    from ..convert import QuantizeOptions

    options = QuantizeOptions(repo=repo, revision=revision, local_dir=local_dir, qtype=qtype, output=output,
                              threads=threads, keep_unquantized=keep_unquantized, verify=verify,
                              progress=sys.stderr.isatty())
    started = time.time()
    with interrupt_note(lambda: interrupted_state(options, started)):  # temporary files are gone by then
        build = build_model(options, heads=heads, smoke=smoke, log=lambda message: typer.echo(message, err=True))
    typer.echo(str(build.output))
