"""`edgeqwen info`: a GGUF file's metadata, and the manifest `edgeqwen quantize` wrote beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..gguf_info import inspect_gguf


def info(
    model: Annotated[Path, typer.Argument(help="A GGUF file.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the metadata as JSON.")] = False,
) -> None:
    """Print a GGUF file's metadata: architecture, size, quantization, context length, chat template."""
    gguf = inspect_gguf(model, expect_arch=None)
    from ..convert.manifest import manifest_path, read_manifest, summary_lines  # the converter loads only when asked

    fields = gguf.as_dict()
    manifest = read_manifest(model)
    if json_output:
        if manifest is not None:
            fields["manifest"] = manifest
        typer.echo(json.dumps(fields, ensure_ascii=False, indent=2, default=str))
        return
    for key, value in fields.items():
        typer.echo(f"{key:<18} {value}")
    if manifest is not None:
        typer.echo(f"\nmanifest ({manifest_path(model).name}):")
        for line in summary_lines(manifest):
            typer.echo(f"  {line}")
