"""edgeqwen: one small Qwen model (4-bit GGUF, llama.cpp) doing several jobs on a small CPU-only device.

The public names are imported on first use (PEP 562), so `import edgeqwen` and the `edgeqwen`
command start without loading llama.cpp, numpy and pydantic; `from edgeqwen import EdgeQwen` works
as before.
"""

from __future__ import annotations

from .lazy import lazy_names

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from .api import ChatStreams, Classification, Conversation, EdgeQwen, Role, RouteDecision, RunResult, load_roles
    from .errors import EdgeQwenError

# spelled out, not computed, so linters see the imports above as re-exports
__all__ = ["ChatStreams", "Classification", "Conversation", "EdgeQwen", "EdgeQwenError", "Role", "RouteDecision",
           "RunResult", "load_roles"]
# public name -> the submodule that defines it: edgeqwen.api, the one door, and the errors
_EXPORTS = {name: "errors" if name == "EdgeQwenError" else "api" for name in __all__}
__version__ = "0.1.0"


__getattr__ = lazy_names(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
