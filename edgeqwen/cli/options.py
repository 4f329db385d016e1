"""What every command shares: its options (written once), opening the model, and progress on stderr."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from .. import settings
from ..errors import EdgeQwenError, InputError

if TYPE_CHECKING:
    from ..api import EdgeQwen

ModelOption = Annotated[Optional[Path], typer.Option(
    "--model", "-m", help=f"GGUF file. Default: ${settings.ENV_MODEL}, then the model in models/.")]
PromptsOption = Annotated[Optional[Path], typer.Option(
    "--prompts", help="Directory of role YAML files; adds to and overrides the shipped roles.")]
ThreadsOption = Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads. Default: physical cores.")]
CtxOption = Annotated[Optional[int], typer.Option(
    "--ctx", min=settings.MIN_N_CTX, help="Context window in tokens (KV cache memory grows with it). Default: up to "
                                          f"{settings.N_CTX}, as this board's memory allows for the model (edgeqwen "
                                          "doctor shows the plan).")]
RouterOption = Annotated[str, typer.Option(
    "--router", help="How --task auto decides: llm (the route role) or rules (keyword + length, for comparison).")]
KvCacheOption = Annotated[Optional[str], typer.Option(
    "--kv-cache", help="f16, or q8_0: about half the KV-cache memory, slower on long prompts. Default: f16 unless this "
                       "board's memory calls for q8_0.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Show llama.cpp's own log and timings.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
# -- eval, train-head, chat-check: labelled data in, a report out --
DataArgument = Annotated[list[Path], typer.Argument(help=(
    "Labelled JSON Lines file(s): text + label (task sentiment) or text + route (task route); optional lang, source."))]
TaskOption = Annotated[str, typer.Option("--task", "-t", help=(
    "sentiment: gold field 'label' (any classify role); route: gold field 'route' (a router role)."))]
RoleOption = Annotated[Optional[str], typer.Option(
    "--role", "-r", help="Classify role. Default: sentiment, or route for --task route.")]
JsonReportOption = Annotated[Optional[Path], typer.Option(
    "--json", help="Also write the whole report to this JSON file.")]
LimitOption = Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the first N texts (or prompts).")]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed (the split's, or the sampler's).")]
# -- on a Ray cluster (docs/ray.md) --
RayFlag = Annotated[bool, typer.Option(
    "--ray", help=f"Run on a Ray cluster: --ray-address, else ${settings.ENV_RAY_ADDRESS}, else one started on this "
                  f"machine; --threads per model copy (default {settings.RAY_THREADS}). Needs pip install "
                  "'edgeqwen\\[ray]'.")]
RayAddressOption = Annotated[Optional[str], typer.Option(
    "--ray-address", help="The Ray cluster to join (HOST:PORT of `ray start --head`, or auto); implies --ray.")]
ActorsPerNodeOption = Annotated[Optional[int], typer.Option(
    "--actors-per-node", min=1, help="Model copies per node of a cluster started here (default: its CPUs / --threads). "
                                     "`ray start` nodes declare theirs.")]
ModelSha256Option = Annotated[Optional[str], typer.Option(
    "--model-sha256",
    help="With --ray: the sha256 every node's model file must have (default: this machine's copy's).")]


def ray_module(name: str):
    """edgeqwen.cluster's submodule `name`, or the one-line error that says how to install Ray."""
    from importlib import import_module

    try:
        return import_module(f"edgeqwen.cluster.{name}")
    except ImportError as error:
        raise EdgeQwenError(f"--ray needs the ray extra ({error.name or error} is missing): "
                            "pip install 'edgeqwen[ray]'") from None


def ray_options(
    on_ray: bool, *, address: str | None, copies: int | None, copies_flag: str, actors_per_node: int | None,
    model_sha256: str | None, model: Path | None, threads: int | None, ctx: int | None, prompts: Path | None,
):
    """The RayOptions a command's options ask for, or None without --ray (where Ray's own options are an error)."""
    if not on_ray:
        given = [flag for flag, value in ((copies_flag, copies), ("--actors-per-node", actors_per_node),
                                          ("--model-sha256", model_sha256)) if value]
        if given:
            raise InputError(f"{', '.join(given)} only apply with --ray")
        return None
    nodes = ray_module("nodes")
    return nodes.RayOptions(
        address=address, actors=copies, threads=threads or settings.RAY_THREADS, actors_per_node=actors_per_node,
        model=str(model) if model else None, model_sha256=model_sha256, ctx=ctx,
        prompts=str(prompts) if prompts else None,
    )


def write_report(path: Path | None, report: dict) -> None:
    """The report as JSON at `path`, if given."""
    if path is None:
        return
    try:
        path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    except OSError as error:
        raise EdgeQwenError(f"{path}: cannot write the report: {error}") from None


def status(message: str) -> None:
    """Progress for people: on stderr, and only when someone is watching."""
    if sys.stderr.isatty():
        typer.echo(message, err=True)


def open_model(model: Path | None, *, ctx: int | None = None, threads: int | None = None, prompts: Path | None = None,
               router: str = "rules", kv_cache: str | None = None, verbose: bool = False) -> EdgeQwen:
    """The model every command loads, with a status line while it loads (llama.cpp is imported here,
    not before: commands that need no model never load it)."""
    status("loading model…")
    return load_model(model, n_ctx=ctx, threads=threads, prompts_dir=prompts, router=router, kv_cache=kv_cache,
                      verbose=verbose)


def load_model(model: Path | None, **keywords: Any) -> EdgeQwen:
    """EdgeQwen(model, **keywords): the one place commands construct it (the in-process CLI tests
    hand the session's model in here)."""
    from ..api import EdgeQwen

    return EdgeQwen(model, **keywords)
