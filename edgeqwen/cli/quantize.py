"""`edgeqwen quantize`: a Hugging Face checkpoint fetched, converted, quantized and verified into a GGUF."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import settings
from ..errors import EdgeQwenError
from .options import fail, interrupted


def quantize(
    repo: Annotated[str, typer.Option("--repo", help="Hugging Face repo (a Qwen1.5 / Qwen2 / Qwen2.5 checkpoint).")] = settings.QUANTIZE_REPO,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch, tag or commit. Default: main.")] = None,
    local_dir: Annotated[Optional[Path], typer.Option("--local-dir", help="Use this folder instead of the Hub: the repo's files, or a Hugging Face cache.")] = None,
    qtype: Annotated[str, typer.Option("--type", "-q", help=f"{settings.QUANT_TYPE} (default), Q4_0, Q5_K_M, Q8_0 or F16.")] = settings.QUANT_TYPE,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output GGUF. Default: models/<repo name>-<type>.gguf.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads. Default: all for quantizing, physical cores for verifying.")] = None,
    keep_unquantized: Annotated[bool, typer.Option("--keep-unquantized", help="Also keep the unquantized GGUF beside the output.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Compare next-token distributions with the unquantized GGUF.")] = True,
    smoke: Annotated[bool, typer.Option("--smoke/--no-smoke", help="Run the sentiment role on a few clear examples afterwards.")] = True,
) -> None:
    """Build a verified GGUF from a Hugging Face checkpoint: fetch, convert (no torch), quantize, verify.

    \b
    Examples:
      edgeqwen quantize                                   # Qwen/Qwen1.5-0.5B-Chat -> models/qwen1.5-0.5b-chat-q4_k_m.gguf
      edgeqwen quantize --type Q8_0 --repo Qwen/Qwen1.5-0.5B
      edgeqwen quantize --local-dir ~/Qwen1.5-0.5B-Chat   # no network: a folder with the repo's files
    """
    from ..convert import QuantizeOptions, run_quantize
    from ..smoke_check import EXAMPLES, smoke_check

    options = QuantizeOptions(repo=repo, revision=revision, local_dir=local_dir, qtype=qtype, output=output,
                              threads=threads, keep_unquantized=keep_unquantized, verify=verify,
                              progress=sys.stderr.isatty())
    try:
        result = run_quantize(options, log=lambda message: typer.echo(message, err=True))
        if smoke:
            correct = smoke_check(result.output, threads, log=typer.echo)
            if correct < len(EXAMPLES):
                typer.echo(f"warning: the sentiment smoke check got {correct}/{len(EXAMPLES)} right", err=True)
    except EdgeQwenError as error:
        fail(error)
    except KeyboardInterrupt:  # Ctrl-C, or `kill` (the entry point makes SIGTERM the same): temporary files are gone
        interrupted("interrupted: no model was written")
    typer.echo(str(result.output))
