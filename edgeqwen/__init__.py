"""edgeqwen: one small Qwen model (4-bit GGUF, llama.cpp) doing several jobs on a small CPU-only device."""

from .api import EdgeQwen, RunResult
from .engine import Engine, SamplingParams
from .errors import EdgeQwenError
from .roles import Role, load_roles
from .router import RouteDecision
from .tasks import Classification, Conversation

__all__ = [
    "Classification",
    "Conversation",
    "EdgeQwen",
    "EdgeQwenError",
    "Engine",
    "Role",
    "RouteDecision",
    "RunResult",
    "SamplingParams",
    "load_roles",
]
__version__ = "0.1.0"
