"""What the tasks above the engine use of it, as typed Protocols: Engine and its Streams satisfy them,
and so does any engine handed to EdgeQwen(engine=...) (the test suite's deterministic one runs the CLI
and the server without a model file)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from ..gguf_info import GGUFInfo
    from ..memory_plan import MemoryPlan
    from .engine import Evaluated
    from .reply import Generation
    from .sampling import SamplingParams
    from .streams import Piece


class StreamsLike(Protocol):
    """Replies decoded together in chat slots (engine/streams.py)."""

    slots: int

    @property
    def active(self) -> int: ...

    @property
    def free(self) -> int: ...

    def start(self, tokens: Sequence[int], sampling: SamplingParams, keep_prefix: int = 0) -> int | None: ...

    def step(self) -> dict[int, Piece]: ...

    def close(self, handle: int) -> Generation | None: ...

    def close_all(self) -> None: ...


class EngineLike(Protocol):
    """One loaded model: tokens, the chat template, evaluation, logits and generation (engine/engine.py)."""

    info: GGUFInfo
    memory_plan: MemoryPlan
    n_ctx: int
    n_vocab: int
    n_embd: int
    n_layer: int
    tokens_evaluated: int
    last_generation: Generation

    @property
    def readable_layers(self) -> range: ...

    def tokenize(self, text: str, *, special: bool = False) -> list[int]: ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def is_plain_text(self, text: str) -> bool: ...

    def reply_header_length(self) -> int: ...

    def chat_tokens(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True,
                    known: dict[str, list[int]] | None = None) -> list[int]: ...

    def next_token_logits(self, tokens: Sequence[int], keep_prefix: int = 0) -> np.ndarray: ...

    def evaluate_many(self, prompts: Sequence[Sequence[int]], keep_prefix: int = 0, *, layers: Sequence[int] = (),
                      logits: bool = True) -> list[Evaluated]: ...

    def sequence_logprob(self, prefix: Sequence[int], continuation: Sequence[int], keep_prefix: int = 0) -> float: ...

    def constrained_choice(self, tokens: Sequence[int], grammar: str, max_tokens: int = 32,
                           keep_prefix: int = 0) -> str: ...

    def stream(self, tokens: Sequence[int], sampling: SamplingParams, keep_prefix: int = 0) -> Iterator[str]: ...

    def reply_budget(self, tokens: Sequence[int], sampling: SamplingParams) -> int: ...

    def bare_decode_rate(self, tokens: Sequence[int], n_tokens: int, streams: int = 1) -> float: ...

    def streams(self, slots: int) -> StreamsLike: ...
