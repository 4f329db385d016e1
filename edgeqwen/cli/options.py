"""What every command shares: its options (written once), the one-line error exit, and progress on stderr."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from .. import settings
from ..errors import EdgeQwenError, InputError

ModelOption = Annotated[Optional[Path], typer.Option("--model", "-m", help=f"GGUF file. Default: ${settings.ENV_MODEL}, then the model in models/.")]
PromptsOption = Annotated[Optional[Path], typer.Option("--prompts", help="Directory of role YAML files; adds to and overrides the shipped roles.")]
ThreadsOption = Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads. Default: physical cores.")]
CtxOption = Annotated[Optional[int], typer.Option("--ctx", min=settings.MIN_N_CTX, help=f"Context window in tokens (KV cache memory grows with it). Default: up to {settings.N_CTX}, as this board's memory allows for the model (edgeqwen doctor shows the plan).")]
RouterOption = Annotated[str, typer.Option("--router", help="How --task auto decides: llm (the route role) or rules (keyword + length, for comparison).")]
KvCacheOption = Annotated[Optional[str], typer.Option("--kv-cache", help="f16, or q8_0: about half the KV-cache memory, slower on long prompts. Default: f16 unless this board's memory calls for q8_0.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Show llama.cpp's own log and timings.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
# -- on a Ray cluster (docs/ray.md) --
RayFlag = Annotated[bool, typer.Option("--ray", help=f"Run on a Ray cluster: --ray-address, else ${settings.ENV_RAY_ADDRESS}, else one started on this machine; --threads per model copy (default {settings.RAY_THREADS}). Needs pip install 'edgeqwen\\[ray]'.")]
RayAddressOption = Annotated[Optional[str], typer.Option("--ray-address", help="The Ray cluster to join (HOST:PORT of `ray start --head`, or auto); implies --ray.")]
ActorsPerNodeOption = Annotated[Optional[int], typer.Option("--actors-per-node", min=1, help="Model copies per node of a cluster started here (default: its CPUs / --threads). `ray start` nodes declare theirs.")]
ModelSha256Option = Annotated[Optional[str], typer.Option("--model-sha256", help="With --ray: the sha256 every node's model file must have (default: this machine's copy's).")]


def ray_module(name: str):
    """edgeqwen.cluster's submodule `name`, or the one-line error that says how to install Ray."""
    from importlib import import_module

    try:
        return import_module(f"edgeqwen.cluster.{name}")
    except ImportError as error:
        fail(EdgeQwenError(f"--ray needs the ray extra ({error.name or error} is missing): pip install 'edgeqwen[ray]'"))


def ray_options(
    on_ray: bool, *, address: str | None, copies: int | None, copies_flag: str, actors_per_node: int | None,
    model_sha256: str | None, model: Path | None, threads: int | None, ctx: int | None, prompts: Path | None,
):
    """The RayOptions a command's options ask for, or None without --ray (where Ray's own options are an error)."""
    if not on_ray:
        given = [flag for flag, value in ((copies_flag, copies), ("--actors-per-node", actors_per_node), ("--model-sha256", model_sha256)) if value]
        if given:
            fail(InputError(f"{', '.join(given)} only apply with --ray"))
        return None
    nodes = ray_module("nodes")
    return nodes.RayOptions(
        address=address, actors=copies, threads=threads or settings.RAY_THREADS, actors_per_node=actors_per_node,
        model=str(model) if model else None, model_sha256=model_sha256, ctx=ctx, prompts=str(prompts) if prompts else None,
    )


def fail(error: Exception) -> NoReturn:
    """Print an error as one line and exit with its code (1, or 2 for bad input)."""
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(getattr(error, "exit_code", 1))


def interrupted(message: str = "interrupted") -> NoReturn:
    """Ctrl-C (or SIGTERM, which the entry point turns into it): a line on stderr, exit 130."""
    typer.echo(f"\n{message}", err=True)
    raise typer.Exit(130)


def status(message: str) -> None:
    """Progress for people: on stderr, and only when someone is watching."""
    if sys.stderr.isatty():
        typer.echo(message, err=True)
