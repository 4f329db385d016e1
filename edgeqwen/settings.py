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
ENV_METRICS_KEY = "EDGEQWEN_METRICS_KEY"  # `edgeqwen serve --metrics-key`
ENV_RAY_ADDRESS = "RAY_ADDRESS"  # Ray's own variable: the cluster `--ray` joins when --ray-address is not given
ENV_MEMORY = "EDGEQWEN_MEMORY"  # plan --ctx and --kv-cache for this much memory (e.g. 1G) instead of the board's
ENV_REPACK = "EDGEQWEN_REPACK"  # on/off: llama.cpp's CPU weight repacking, instead of the memory plan's choice
ENV_MMAP = "EDGEQWEN_MMAP"  # on/off: memory-map the model file, instead of the memory plan's choice


def model_file() -> Path | None:
    """$EDGEQWEN_MODEL, if set."""
    value = os.environ.get(ENV_MODEL)
    return Path(value).expanduser() if value else None


def models_dir() -> Path | None:
    """$EDGEQWEN_MODELS_DIR, if set."""
    value = os.environ.get(ENV_MODELS_DIR)
    return Path(value).expanduser() if value else None


def memory_override() -> int | None:
    """$EDGEQWEN_MEMORY in bytes ("1G", "900M", "1.5G"; plain numbers are MiB), if set."""
    value = os.environ.get(ENV_MEMORY, "").strip().upper().removesuffix("B")
    if not value:
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    unit = units.get(value[-1], 1 << 20)
    try:
        amount = float(value.rstrip("KMG"))
    except ValueError:
        raise ValueError(f"${ENV_MEMORY}={os.environ[ENV_MEMORY]!r} is not a size like 1G or 900M") from None
    return int(amount * unit) if amount > 0 else None


def repack_override() -> bool | None:
    """$EDGEQWEN_REPACK as on/off, if set."""
    return _switch(ENV_REPACK)


def mmap_override() -> bool | None:
    """$EDGEQWEN_MMAP as on/off, if set."""
    return _switch(ENV_MMAP)


def _switch(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in ("1", "on", "yes", "true"):
        return True
    if value in ("0", "off", "no", "false"):
        return False
    raise ValueError(f"${name}={os.environ[name]!r} is not on or off")


def cache_dir() -> Path:
    """$EDGEQWEN_CACHE, else $XDG_CACHE_HOME/edgeqwen, else ~/.cache/edgeqwen."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgeqwen"


def api_key() -> str | None:
    """$EDGEQWEN_API_KEY, if set (`edgeqwen serve` reads it through its --api-key option)."""
    return os.environ.get(ENV_API_KEY) or None


def ray_address() -> str | None:
    """$RAY_ADDRESS, if set: the Ray cluster that `--ray` joins instead of starting one on this machine."""
    return os.environ.get(ENV_RAY_ADDRESS) or None


# -- the engine -------------------------------------------------------------------------------

# The context window (prompt + reply, and the number of KV cells) and the KV-cache type are chosen
# per model and board by memory_plan.py unless given; N_CTX and KV_CACHE are what it prefers.
N_CTX = 2048
MIN_N_CTX = 64
N_BATCH = 128  # tokens per llama_decode call: less memory than 512 at the same speed (docs/benchmarks.md)
KV_CACHE_TYPES = ("f16", "q8_0")
KV_CACHE = "f16"
FLASH_ATTN = True  # faster decode and long prompts on x86 (docs/benchmarks.md)
# llama.cpp's CPU weight repacking copies the weights into its own layout: no faster on x86, so off
# there; on ARM it is llama.cpp's dotprod fast path, so preferred wherever the memory plan finds room
# for it (memory_plan.py counts the copy; docs/raspberry-pi.md has the figures).
REPACK = platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686")
MMAP = True  # memory-map the model file, unless repacking copies the weights anyway (the plan decides)
BATCH_SIZE = 16  # texts classified together by `edgeqwen sentiment FILE` and `edgeqwen eval` (docs/benchmarks.md)
ROUTER = "llm"  # how --task auto decides: the route role (llm) or the keyword rule (rules)

# -- building a model (`edgeqwen quantize`) ---------------------------------------------------

QUANTIZE_REPO = "Qwen/Qwen1.5-0.5B-Chat"
QUANT_TYPE = "Q4_K_M"

# -- the server -------------------------------------------------------------------------------

HOST = "127.0.0.1"
PORT = 8080
QUEUE_SIZE = 8  # requests that may wait behind the running ones
CHAT_SLOTS = 4  # chat replies generated together, one token of each per decode step (`edgeqwen serve --slots`)
MAX_CHAT_SLOTS = 8  # the KV cache's sequence ids set aside for chat slots
MAX_BODY_BYTES = 256 * 1024
MAX_TEXT_CHARS = 16_000
LOG_LEVEL = "info"
# Seconds from a request's arrival to its answer (`--request-timeout`): a reply still going then ends
# with finish_reason "length", a request still waiting gets 503 + Retry-After. A 256-token reply in
# each of four slots at 2 tokens/s each (a slow board; docs/server.md) is about 130 s.
REQUEST_TIMEOUT = 180.0
# uvicorn's limit_concurrency: connections or requests at once (beyond, uvicorn's own 503); request
# bodies being read then hold at most 128 x MAX_BODY_BYTES = 32 MiB.
MAX_CONNECTIONS = 128
KEEP_ALIVE_TIMEOUT = 5  # seconds an idle keep-alive connection stays open (uvicorn's timeout_keep_alive)
HEAD_TIMEOUT = 10.0  # seconds for a request line and its headers to arrive (protocol.py)
BODY_TIMEOUT = 30.0  # seconds for a request body to arrive (body.py): 256 KiB over a slow link

# -- a Ray cluster (`--ray`, docs/ray.md) -------------------------------------------------------

# The custom resource a node offers once per model copy it can hold (`ray start --resources`): Ray
# places each actor or replica on a node with a free one, so a small board never gets a second model.
RAY_SLOT = "edgeqwen"
RAY_THREADS = 2  # llama.cpp threads per model copy, and the CPUs Ray reserves for it
RAY_BATCHES_PER_BLOCK = 2  # a Ray Data block holds this many BATCH_SIZE batches: the work one actor call does
RAY_NODE_CHECK_TIMEOUT = 900  # seconds for every node to find and hash its model file (a first sha256 on a board)
# requests a replica takes beyond its queue: /health, /v1/models and the page need no model
RAY_SERVE_EXTRA_REQUESTS = 8
