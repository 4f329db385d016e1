"""Every default and environment variable of edgeqwen, in one place (in the manner of ollama's envconfig).

Modules take their defaults from here and read the environment only through the functions below,
so `grep settings.` finds every knob. Built-in modules only: the console script imports this early.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# -- environment variables --------------------------------------------------------------------

ENV_MODEL = "EDGEQWEN_MODEL"  # the model file, when --model is not given
ENV_MODELS_DIR = "EDGEQWEN_MODELS_DIR"  # where models are looked for and fetched to (replaces ./models)
ENV_CACHE = "EDGEQWEN_CACHE"  # where saved role prefixes go (default: $XDG_CACHE_HOME/edgeqwen)
ENV_API_KEY = "EDGEQWEN_API_KEY"  # `edgeqwen serve --api-key`


def model_file() -> Path | None:
    """$EDGEQWEN_MODEL, if set."""
    value = os.environ.get(ENV_MODEL)
    return Path(value).expanduser() if value else None


def models_dir() -> Path | None:
    """$EDGEQWEN_MODELS_DIR, if set."""
    value = os.environ.get(ENV_MODELS_DIR)
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """$EDGEQWEN_CACHE, else $XDG_CACHE_HOME/edgeqwen, else ~/.cache/edgeqwen."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgeqwen"


# -- the engine -------------------------------------------------------------------------------

N_CTX = 2048  # context window in tokens: prompt + reply, and the number of KV cells
MIN_N_CTX = 64
N_BATCH = 128  # tokens per llama_decode call: less memory than 512 at the same speed (docs/benchmarks.md)
KV_CACHE_TYPES = ("f16", "q8_0")
KV_CACHE = "f16"
FLASH_ATTN = True  # faster decode and long prompts on x86 (docs/benchmarks.md)
# llama.cpp's CPU weight repacking keeps a second copy of the weights: no faster on x86, so off there;
# on ARM it is llama.cpp's NEON/dotprod fast path, so left on.
REPACK = platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686")
BATCH_SIZE = 16  # texts classified together by `edgeqwen sentiment FILE` and `edgeqwen eval` (docs/benchmarks.md)
ROUTER = "llm"  # how --task auto decides: the route role (llm) or the keyword rule (rules)

# -- building a model (`edgeqwen quantize`) ---------------------------------------------------

QUANTIZE_REPO = "Qwen/Qwen1.5-0.5B-Chat"
QUANT_TYPE = "Q4_K_M"

# -- the server -------------------------------------------------------------------------------

HOST = "127.0.0.1"
PORT = 8080
QUEUE_SIZE = 8  # requests that may wait behind the running one
MAX_BODY_BYTES = 256 * 1024
MAX_TEXT_CHARS = 16_000
LOG_LEVEL = "info"
