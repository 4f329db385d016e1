"""The `edgeqwen` command: one file per command, each parsing its options, calling the public API and printing.

Enter through edgeqwen.console.main (the console script, and `python -m edgeqwen`), which holds
signals over these imports and makes SIGTERM end a command the way Ctrl-C does. The command files
import nothing heavy at the top: `--help`, `roles`, `info` and `doctor` never load llama.cpp. Every
command is registered through guard.guarded, where errors and interrupts become one line.
"""

from __future__ import annotations

import typer

from .bench import bench
from .chat_check import chat_check
from .doctor import doctor
from .eval import eval_command
from .guard import guarded
from .heads import heads
from .info import info
from .quantize import quantize
from .roles import roles
from .run import run
from .sentiment import sentiment
from .serve import serve
from .train_head import train_head

app = typer.Typer(
    help="One small Qwen model (4-bit GGUF via llama.cpp) for sentiment analysis and chat on CPU-only devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
COMMANDS = {
    "run": run, "roles": roles, "info": info, "serve": serve, "sentiment": sentiment, "eval": eval_command,
    "train-head": train_head, "chat-check": chat_check, "bench": bench, "quantize": quantize, "heads": heads,
    "doctor": doctor,
}
for name, command in COMMANDS.items():
    app.command(name=name)(guarded(command))
