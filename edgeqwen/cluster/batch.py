"""Batch classification on a Ray cluster: a pool of actors, each loading the model once, labels a Ray Dataset or a file.

A file gives the same records, in the same order, as `edgeqwen sentiment FILE` on one machine: the
file is read by the same reader (batch.read_inputs: the same texts, line numbers and errors, and it
need not be on every node), cut into blocks whose batches are exactly the single-process batches
(so each text is evaluated beside the same others), and the records are written by the same
RecordWriter. Each row carries its place in the file (`seq`); the driver writes rows strictly in
that order and at most once, so the output never depends on the order in which Ray returns blocks,
nor on a block being run again after an actor died (Ray restarts the actor and retries its task).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import pyarrow as pa
import ray
import ray.data

from .. import settings
from ..api import EdgeQwen
from ..batch import BatchSummary, RecordWriter, classify_records, read_inputs
from ..errors import EdgeQwenError
from ..roles import load_roles, pick_role
from .nodes import (
    ClusterError,
    ModelSpec,
    RayOptions,
    actor_options,
    check_every_node,
    check_node_model,
    connect,
    copies,
    model_spec,
    one_line,
)

# What each labelled row gains (a column of the same name already there is replaced).
RESULT_SCHEMA = pa.schema([("label", pa.string()), ("display", pa.string()), ("confidence", pa.float64()),
                           ("error", pa.string())])


@dataclass(frozen=True)
class LabellerSpec:
    """What each actor needs to build its model: sent to it once, when Ray creates it."""

    model: ModelSpec
    role: str
    text_column: str
    threads: int
    ctx: int | None


class Labeller:
    """One model copy in a Ray actor: loaded once, then labels one batch of rows per call."""

    def __init__(self, spec: LabellerSpec) -> None:
        path = check_node_model(spec.model)  # cheap after the first time on a node: the stamp holds the hash
        self.eq = EdgeQwen(path, n_ctx=spec.ctx, threads=spec.threads, prompts_dir=spec.model.prompts, router="rules")
        self.spec = spec

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column(self.spec.text_column).to_pylist()
        records = classify_records(lambda good: self.eq.classify_many(good, self.spec.role), list(enumerate(texts)))
        batch = batch.drop_columns([name for name in RESULT_SCHEMA.names if name in batch.column_names])
        for field in RESULT_SCHEMA:
            batch = batch.append_column(field, pa.array([record[field.name] for record in records], type=field.type))
        return batch


def classify_dataset(
    dataset: ray.data.Dataset,
    options: RayOptions = RayOptions(),
    *,
    role: str = "sentiment",
    text_column: str = "text",
    batch_size: int = settings.BATCH_SIZE,
) -> ray.data.Dataset:
    """`dataset` with label, display, confidence and error columns from a classify role, computed by a
    pool of actors (each one model copy). Lazy, like any Ray Dataset: nothing runs until it is consumed.

    >>> ds = ray.data.read_json("reviews.jsonl")                # any dataset with a "text" column
    >>> classify_dataset(ds, RayOptions(threads=2)).write_json("labelled/")
    """
    connect(options)  # a dataset means Ray is up already: this only checks
    pick_role(load_roles(options.prompts), role, "classify")  # an unknown role fails here, not in every actor
    model = model_spec(options)
    pool = copies(options)
    check_every_node(model)
    spec = LabellerSpec(model, role, text_column, options.threads, options.ctx)
    resources = actor_options(options)
    # Ray Data restarts a dead actor and retries its task by default (max_restarts=-1,
    # max_task_retries=-1 in ActorPoolMapOperator); passing them would use its deprecated kwargs.
    # One task in flight per actor: the blocks spread evenly, and a dying actor holds at most one.
    return dataset.map_batches(
        Labeller,
        fn_constructor_kwargs={"spec": spec},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=pool, max_tasks_in_flight_per_actor=1),
        num_cpus=resources["num_cpus"],
        resources=resources["resources"],
    )


def classify_file_on_ray(
    inputs: Path,
    output: Path | None,
    options: RayOptions = RayOptions(),
    *,
    role: str = "sentiment",
    resume: bool = False,
    stdout: TextIO | None = None,
    on_progress: Callable[[int], None] | None = None,
    batch_size: int = settings.BATCH_SIZE,
) -> BatchSummary:
    """`edgeqwen sentiment FILE` on a Ray cluster: the same records in the same order, written as they come."""
    started = time.perf_counter()
    progress = on_progress or (lambda count: None)
    with RecordWriter(output, resume=resume, stdout=stdout) as writer:
        rows, skipped = _unwritten(inputs, writer.skip_through)
        progress(skipped)
        if rows:
            disconnect = connect(options)
            try:
                dataset, blocks = _dataset(rows, batch_size)
                # No more actors than blocks: a copy with no block to label would load the model for nothing.
                options = replace(options, actors=min(copies(options), blocks))
                labelled = classify_dataset(dataset, options, role=role, batch_size=batch_size)
                _write_in_order(labelled, len(rows), writer, lambda count: progress(skipped + count))
            except EdgeQwenError:
                raise
            except Exception as error:  # noqa: BLE001 - a failed Ray job, reported as one line
                raise ClusterError(f"the Ray job failed: {one_line(error)}") from None
            finally:
                disconnect()
    return BatchSummary(done=len(rows), skipped=skipped, seconds=time.perf_counter() - started)


def _unwritten(inputs: Path, skip_through: int) -> tuple[list[tuple[int, str]], int]:
    """The (line, text) inputs not yet in the output, and how many are (when resuming)."""
    rows, skipped = [], 0
    for number, text in read_inputs(inputs):
        if number > skip_through:
            rows.append((number, text))
        else:
            skipped += 1
    return rows, skipped


def _dataset(rows: list[tuple[int, str]], batch_size: int) -> tuple[ray.data.Dataset, int]:
    """The rows as a Dataset of blocks of whole single-process batches (seq, line, text), and its number of blocks."""
    block = batch_size * settings.RAY_BATCHES_PER_BLOCK
    tables = [
        pa.table({
            "seq": pa.array(range(first, first + len(chunk)), pa.int64()),
            "line": pa.array([number for number, _ in chunk], pa.int64()),
            "text": pa.array([text for _, text in chunk], pa.string()),
        })
        for first in range(0, len(rows), block)
        for chunk in [rows[first : first + block]]
    ]
    return ray.data.from_arrow(tables), len(tables)


def _write_in_order(labelled: ray.data.Dataset, total: int, writer: RecordWriter,
                    progress: Callable[[int], None]) -> None:
    """Write each record once, in seq order, as soon as every earlier one is written. Records that come
    early wait in `early` (a few blocks at most: Ray returns blocks roughly in the order it started them)."""
    early: dict[int, dict] = {}
    written = 0
    for table in labelled.iter_batches(batch_size=None, batch_format="pyarrow"):
        for record in table.to_pylist():
            if record["seq"] >= written:
                early.setdefault(record["seq"], record)  # a block run twice gives the same records: keep one
        ready = []
        while written in early:
            ready.append(early.pop(written))
            written += 1
        if ready:
            writer.write(ready)
            progress(written)
    if written != total:
        raise ClusterError(f"the Ray job returned {written} of {total} results in order; the output holds those "
                           "(continue with --resume)")
