"""`edgeqwen roles`: the roles found, shipped and from --prompts, with their kind, description and labels."""

from __future__ import annotations

import typer

from .options import PromptsOption


def roles(prompts: PromptsOption = None) -> None:
    """List the roles found (shipped ones and those in --prompts DIR)."""
    from ..roles import load_roles

    found = load_roles(prompts)
    for role in found.values():
        labels = f" labels: {', '.join(role.label_names)}" if role.labels else ""
        typer.echo(f"{role.name:<12} {role.kind:<9} {role.description}{labels}")
        typer.echo(f"{'':<12} {role.source}")
        if role.head:
            reads = (f" (reads the text through the '{role.head_prompt.name}' role's prompt)"
                     if role.head_prompt is not role else "")
            typer.echo(f"{'':<12} head {role.head}{reads}")
