"""Which model file to use: --model, then $EDGEQWEN_MODEL, then the best .gguf in a models folder."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from . import settings
from .errors import ModelNotFoundError

GET_MODEL_HINT = "run `make model` to fetch the stand-in model or `make quantize` to build Qwen1.5-0.5B-Chat"
STANDIN_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
# Preference order inside a models directory (lower rank wins).
QUANTIZED_GLOB = "qwen1.5-0.5b-chat-*q4_k_m*.gguf"  # what `make quantize` writes
QWEN15_GLOB = "qwen1.5*.gguf"


def _checkout_models_dir() -> Path | None:
    """models/ beside the edgeqwen package in a source checkout, if there is one."""
    path = Path(__file__).resolve().parent.parent / "models"
    return path if path.is_dir() else None


def default_models_dir() -> Path:
    """Where fetching writes by default."""
    return settings.models_dir() or _checkout_models_dir() or Path.cwd() / "models"


def models_search_dirs() -> list[Path]:
    """Directories searched for models, in order; EDGEQWEN_MODELS_DIR replaces the defaults."""
    env = settings.models_dir()
    if env:
        return [env]
    dirs = [Path.cwd() / "models"]
    checkout = _checkout_models_dir()
    if checkout is not None and checkout.resolve() != dirs[0].resolve():
        dirs.append(checkout)
    return dirs


def _rank(name: str) -> int:
    low = name.lower()
    if fnmatch.fnmatchcase(low, QUANTIZED_GLOB):
        return 0
    if fnmatch.fnmatchcase(low, QWEN15_GLOB):
        return 1
    if low == STANDIN_FILE:
        return 2
    return 3


def candidate_models(directory: Path) -> list[Path]:
    """The .gguf files in directory, best first (see _rank); .part downloads never match."""
    if not directory.is_dir():
        return []
    files = [p for p in directory.iterdir() if p.name.lower().endswith(".gguf") and p.is_file()]
    return sorted(files, key=lambda p: (_rank(p.name), p.name))


def _existing(path: Path, source: str) -> Path:
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path} (from {source}; {GET_MODEL_HINT})")
    return path


def resolve_model(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Pick the model file: explicit path, then $EDGEQWEN_MODEL, then the best file in a models dir."""
    if explicit is not None and str(explicit) != "":
        return _existing(Path(explicit).expanduser(), "--model")
    env = settings.model_file()
    if env:
        return _existing(env, settings.ENV_MODEL)
    dirs = models_search_dirs()
    for directory in dirs:
        found = candidate_models(directory)
        if found:
            return found[0]
    searched = ", ".join(str(d) for d in dirs)
    raise ModelNotFoundError(
        f"no .gguf model found in {searched} ({GET_MODEL_HINT}, "
        f"or pass --model PATH / set {settings.ENV_MODEL})"
    )
