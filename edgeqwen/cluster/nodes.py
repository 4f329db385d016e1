"""Joining or starting a Ray cluster, and making sure each node that runs a model copy holds the same model file.

A model copy (a Ray Data actor or a Ray Serve replica) reserves `threads` CPUs and one slot of the
`edgeqwen` resource (settings.RAY_SLOT), which a node offers once per copy it can hold
(`ray start --resources='{"edgeqwen": N}'`; a cluster started here offers `actors_per_node`). The
model is a path that every such node must have, the same file on each: checked by sha256 before
it is loaded (a stamp beside the file saves rehashing it on the next run).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .. import settings
from ..errors import EdgeQwenError, ModelFileError, ModelNotFoundError
from ..hashing import stamped_sha256
from ..model_paths import resolve_model

SHA256 = re.compile(r"[0-9a-f]{64}")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ClusterError(EdgeQwenError):
    """The Ray cluster cannot be reached, cannot hold the model copies asked for, or a job on it failed."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how many model copies run. Every field has the default a plain `--ray` uses."""

    address: str | None = None  # a cluster to join; None: $RAY_ADDRESS, else one started on this machine
    actors: int | None = None  # model copies in all; None: as many as the cluster's slots and CPUs hold
    threads: int = settings.RAY_THREADS  # llama.cpp threads per copy, and the CPUs Ray reserves for it
    actors_per_node: int | None = None  # only for a cluster started here; `ray start` nodes declare their own
    model: str | None = None  # the model's path on every node; None: this machine's model (settings)
    model_sha256: str | None = None  # what every node's copy must hash to; None: this machine's copy
    ctx: int | None = None  # None: each node's memory plan picks it (memory_plan.py)
    prompts: str | None = None  # a role directory, at this path on every node


@dataclass(frozen=True)
class ModelSpec:
    """The model file each node must hold, and the prompts directory beside it, if any."""

    path: str
    sha256: str
    prompts: str | None = None


def connect(options: RayOptions) -> Callable[[], None]:
    """Join the cluster (or start one on this machine) unless this process is already connected;
    returns what undoes it (nothing, when the caller had connected)."""
    if ray.is_initialized():
        return lambda: None
    address = options.address or settings.ray_address()
    if address and options.actors_per_node:
        raise ClusterError(
            f"--actors-per-node is for a cluster started here; each node of {address} declares its own: "
            f"ray start --address ... --resources='{{\"{settings.RAY_SLOT}\": N}}' (docs/ray.md)"
        )
    # Workers' own output stays in Ray's log files: stdout may be the results (JSONL).
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            per_node = options.actors_per_node or max(1, (os.cpu_count() or 1) // options.threads)
            ray.init(resources={settings.RAY_SLOT: per_node}, include_dashboard=False, **quiet)
    except Exception as error:  # noqa: BLE001 - Ray raises many kinds here; the user needs one line
        raise ClusterError(f"cannot start or reach the Ray cluster{f' at {address}' if address else ''}: "
                           f"{one_line(error)}") from None
    if on_sigterm is not None and threading.current_thread() is threading.main_thread():
        # ray.init puts in a SIGTERM handler that exits with status 15 at once; the command's own
        # (console.catch_sigterm) ends it as Ctrl-C does: output flushed, the line, status 143.
        signal.signal(signal.SIGTERM, on_sigterm)
    _quiet_ray_libraries()
    return ray.shutdown


def _quiet_ray_libraries() -> None:
    """No Ray Data progress bars or Serve start-up lines (only in a session this process started): the
    commands show their own progress, and say themselves when the server is ready."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    for name in ("ray.data", "ray.serve"):
        logging.getLogger(name).setLevel(logging.ERROR)  # "progress bars disabled" is a warning, too


def capacity(threads: int) -> int:
    """How many model copies of `threads` threads the cluster's alive nodes hold: per node, its slots,
    but no more than its CPUs allow."""
    total = 0
    for node in _slot_nodes():
        resources = node["Resources"]
        total += min(int(resources[settings.RAY_SLOT]), int(resources.get("CPU", 0) // threads))
    return total


def copies(options: RayOptions) -> int:
    """The number of model copies to run: `options.actors`, checked against what the cluster holds."""
    holds = capacity(options.threads)
    if holds == 0:
        raise ClusterError(
            f"no node of the Ray cluster offers a model slot with {options.threads} free CPUs: start each node with "
            f"ray start ... --num-cpus N --resources='{{\"{settings.RAY_SLOT}\": COPIES}}' (docs/ray.md)"
        )
    if options.actors is not None and options.actors > holds:
        raise ClusterError(f"{options.actors} model copies asked for, but the cluster holds {holds} with "
                           f"{options.threads} threads each (its slots and CPUs)")
    return options.actors or holds


def actor_options(options: RayOptions) -> dict:
    """What each model copy reserves: its threads as CPUs, and one model slot."""
    return {"num_cpus": options.threads, "resources": {settings.RAY_SLOT: 1}}


def model_spec(options: RayOptions) -> ModelSpec:
    """The model path every node must have and the sha256 its copy must have, taken from this machine's
    copy unless --model-sha256 gives it (a driver that holds no model, e.g. a laptop)."""
    wanted = options.model_sha256.lower() if options.model_sha256 else None
    if wanted is not None and not SHA256.fullmatch(wanted):
        raise ClusterError(f"--model-sha256 must be 64 hex digits, not {options.model_sha256!r}")
    local = Path(options.model).expanduser() if options.model else None
    if local is not None and not local.exists():
        if wanted:
            return ModelSpec(str(local), wanted, options.prompts)  # only the nodes have it
        raise ModelNotFoundError(f"model file {local} is not on this machine: give --model-sha256 so each node's copy "
                                 "can be checked")
    path = resolve_model(local).resolve()
    digest = stamped_sha256(path)
    if wanted and digest != wanted:
        raise ModelFileError(f"{path} on this machine has sha256 {digest}, not the --model-sha256 given")
    return ModelSpec(str(path), digest, options.prompts)


def check_node_model(model: ModelSpec) -> Path:
    """On a node: its model file, once its sha256 matches; else a one-line error naming the node."""
    node = socket.gethostname()
    path = Path(model.path)
    if not path.is_file():
        raise ModelNotFoundError(f"node {node}: no model file at {path}: copy it there, or give a path every node "
                                 "shares")
    digest = stamped_sha256(path)
    if digest != model.sha256:
        raise ModelFileError(f"node {node}: {path} has sha256 {digest[:16]}…, expected {model.sha256[:16]}…: "
                             "copy the same model file to every node")
    if model.prompts and not Path(model.prompts).is_dir():
        raise ModelNotFoundError(f"node {node}: no prompts directory at {model.prompts}: copy it there too")
    return path


def _node_problem(model: ModelSpec) -> str | None:
    try:
        check_node_model(model)
    except EdgeQwenError as error:
        return str(error)
    return None


def check_every_node(model: ModelSpec) -> None:
    """Check the model file on every node with a slot, all at once, before any copy loads it, so a missing
    or different file is one clear error here rather than a copy failing again and again on its node."""
    check = ray.remote(num_cpus=0, max_retries=0)(_node_problem)
    pending = [
        check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(model)
        for node in _slot_nodes()
    ]
    try:
        problems = [found for found in ray.get(pending, timeout=settings.RAY_NODE_CHECK_TIMEOUT) if found]
    except Exception as error:  # noqa: BLE001 - a node that died or timed out mid-check
        raise ClusterError(f"checking the model file on the nodes failed: {one_line(error)}") from None
    if problems:
        raise ModelFileError("; ".join(problems))


def _slot_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node.get("Alive") and node["Resources"].get(settings.RAY_SLOT, 0) >= 1]


def one_line(error: BaseException) -> str:
    """A Ray failure as one line: the edgeqwen error inside it if there is one, else its last line."""
    seen: BaseException | None = error
    while seen is not None:  # Ray keeps the remote exception as `cause`, Python as __cause__
        if isinstance(seen, EdgeQwenError):
            return str(seen)
        seen = getattr(seen, "cause", None) or seen.__cause__
    text = ANSI.sub("", str(error))
    inner = re.findall(r"edgeqwen\.errors\.\w+: (.+)", text)
    if inner:
        return inner[-1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
