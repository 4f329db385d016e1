"""The `edgeqwen` command: one file per command, each parsing its options, calling the public API and printing.

Enter through edgeqwen.console.main (the console script, and `python -m edgeqwen`), which holds
signals over these imports and makes SIGTERM end a command the way Ctrl-C does.
"""

from __future__ import annotations

import typer

from .bench import bench
from .doctor import doctor
from .eval import eval_command
from .heads import heads
from .info import info
from .quantize import quantize
from .roles import roles
from .run import run
from .sentiment import sentiment
from .serve import serve

app = typer.Typer(
    help="One small Qwen model (4-bit GGUF via llama.cpp) for sentiment analysis and chat on CPU-only devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in (run, roles, info, serve, sentiment, bench, quantize, heads):
    app.command()(command)
app.command(name="eval")(eval_command)
app.command()(doctor)
