"""Heads for one model file: every trainable classify role's head trained and written beside the model.

A role is trainable when its YAML names `training:` texts (the shipped sentiment and route roles do),
or when the caller hands it a labelled file. Each head is fitted on 80 % of the texts, scored on the
other 20 % with and without the head, and written to `<model stem>.heads/<role's head file>`, where
the runtime looks first (head.head_for), so no role file needs editing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..evaluate import EvalOptions, read_data
from ..head import model_heads_dir
from ..roles import Role, pick_role
from .head import train_head

TRAIN_FRACTION = 0.8
SEED = 0


@dataclass
class HeadResult:
    role: str
    path: Path
    with_head: float  # accuracy on the held-out part of the role's texts
    without_head: float  # the same texts by the role's label logits
    n_train: int
    n_held_out: int
    reads: str  # what the head reads
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "path": str(self.path)}


def trainable_roles(roles: dict[str, Role]) -> list[str]:
    """The classify roles whose YAML names training texts, in name order."""
    return sorted(name for name, role in roles.items() if role.kind == "classify" and role.training is not None)


@dataclass
class HeadJob:
    """One head to train: the role, its labelled texts, and which gold field they carry."""

    role: Role
    path: Path
    task: str  # "route" (text + route) for a router role, else "sentiment" (text + label)
    items: list


def plan_heads(roles: dict[str, Role], role_names: Sequence[str] = (), data: Path | None = None) -> list[HeadJob]:
    """The heads `train_model_heads` would train, with their texts read: every problem (no such role,
    nothing to train on, bad data) is found here, before the model loads.

    `data` is a labelled JSONL for a single role that names no training texts of its own (or to
    replace them)."""
    if data is not None and len(role_names) != 1:
        raise InputError("--data trains one role's head: name it with --role")
    names = list(role_names) or trainable_roles(roles)
    if not names:
        raise InputError("no classify role names training texts; give --role NAME --data LABELLED.jsonl")
    return [_job(roles, name, data) for name in names]


def train_model_heads(eq: Any, role_names: Sequence[str] = (), data: Path | None = None, *, progress: bool = True,
                      log: Callable[[str], None] = print, jobs: Sequence[HeadJob] | None = None) -> list[HeadResult]:
    """Train the heads of `role_names` (default: every trainable role) for the loaded model, or the
    `jobs` plan_heads gave; see plan_heads for `data`."""
    jobs = plan_heads(eq.roles, role_names, data) if jobs is None else jobs
    results = []
    for number, job in enumerate(jobs, start=1):
        log(f"[{number}/{len(jobs)}] head of role '{job.role.name}' on {job.path.name} ({len(job.items)} texts)")
        results.append(_train_one(eq, job, progress))
    return results


def _job(roles: dict[str, Role], name: str, data: Path | None) -> HeadJob:
    role = pick_role(roles, name, "classify")
    path = data or role.training_path
    if path is None:
        raise InputError(f"role '{name}' names no training texts: give --data LABELLED.jsonl (text + label per line)")
    task = "route" if role.is_router else "sentiment"  # which gold field the lines carry: route or label
    return HeadJob(role, path, task, read_data([path], task))


def _train_one(eq: Any, job: HeadJob, progress: bool) -> HeadResult:
    role, path, task, items = job.role, job.path, job.task, job.items
    output = model_heads_dir(eq.model_info.path) / role.head_file
    options = EvalOptions(data=[path], task=task, role=role.name, progress=progress)
    block = role.training is not None and role.training.reads in ("block", "message") and bool(_blocks(eq))
    started = time.perf_counter()
    report = train_head(eq, options, items, output, TRAIN_FRACTION, SEED, choose_layer=block,
                        to_message=block and role.training.reads == "message")
    head, logits = report["systems"][0], report["systems"][1]
    eq.reload_heads()  # the next call of this role uses the new head
    return HeadResult(
        role=role.name, path=output, with_head=head["accuracy"], without_head=logits["accuracy"],
        n_train=report["n_train"], n_held_out=report["n"], reads=report["reads"],
        seconds=round(time.perf_counter() - started, 1),
    )


def _blocks(eq: Any) -> list[int]:
    return list(eq.readable_layers[2::2])


def format_summary(results: Sequence[HeadResult]) -> list[str]:
    """One line per role: held-out accuracy with and without the head, and where the head went."""
    lines = [f"{'role':12} {'with head':>10} {'label logits':>13}  held out  head file"]
    for r in results:
        lines.append(f"{r.role:12} {r.with_head:>10.1%} {r.without_head:>13.1%}  {r.n_held_out:>8}  {r.path}")
    return lines
