"""A deterministic engine for the fast tier: EdgeQwen(engine=FakeEngine()) runs the CLI and the server
with no model file and no llama.cpp, so their plumbing (options, output, files, HTTP, queues, errors)
is tested in seconds. It satisfies edgeqwen.engine.EngineLike; what it says is made up by rules:

- tokens: ChatML markup is one control token each; text is split into words, spaces, punctuation
  and single Han characters, each a token numbered on first sight (so every label is one token);
- logits: zero, but after a prompt, the label words get a score from cue words in the last user
  message: negative cues ("bad", "terrible", "差" ...) lift "negative", others "positive"; a question
  or a request lifts "question", anything else "review";
- replies: "Reply N: " and the first words of the message, one token a step, cut at max_tokens;
  the SamplingParams of every reply started are kept in `samplings` (what reached the engine).

Every model behaviour stays tested on the real model; this engine only stands in where it is not the point.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeqwen.engine import Evaluated, Generation, Piece, SamplingParams
from edgeqwen.gguf_info import GGUFInfo
from edgeqwen.grammar import grammar_literals
from edgeqwen.memory_plan import MemoryPlan

MARKUP = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
N_VOCAB = 8192
N_EMBD, N_LAYER = 16, 4
NEGATIVE_CUES = ("bad", "terrible", "awful", "worst", "broke", "rude", "cold", "never", "not", "waste", "poor",
                 "差", "坏", "糟", "失望", "难", "慢", "贵", "不")
QUESTION_CUES = ("?", "？", "how", "what", "why", "can you", "please", "tell me", "help", "吗", "请", "怎么", "什么")
_PIECES = re.compile(r"<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>|[A-Za-z]+|\d+|\s+|[\u3400-\u9fff]|.", re.S)


class FakeEngine:
    """Deterministic stand-in for edgeqwen.engine.Engine (see the module docstring)."""

    def __init__(self, n_ctx: int = 2048) -> None:
        self.n_ctx, self.n_vocab, self.n_embd, self.n_layer = n_ctx, N_VOCAB, N_EMBD, N_LAYER
        self._ids: dict[str, int] = {markup: i for i, markup in enumerate(MARKUP)}
        self._pieces: list[str] = list(MARKUP)
        self.end_of_turn = frozenset({self._ids["<|im_end|>"], self._ids["<|endoftext|>"]})
        self.info = GGUFInfo(
            path=Path("fake-engine.gguf"), file_size=1, architecture="qwen2", name="fake", file_type="F32",
            context_length=32768, embedding_length=N_EMBD, block_count=N_LAYER, head_count=2, head_count_kv=2,
            vocab_size=N_VOCAB, n_tensors=0, n_params=0, has_chat_template=True, chat_template="chatml",
            tied_embeddings=True, special_tokens=frozenset(range(len(MARKUP))),
        )
        self.memory_plan = MemoryPlan("f16", n_ctx, 1 << 20, None, "you")
        self.tokens_evaluated = 0
        self.last_generation = Generation()
        self.samplings: list[SamplingParams] = []  # of every reply started, streamed or in a chat slot

    # -- tokens -----------------------------------------------------------------------------------

    @property
    def readable_layers(self) -> range:
        return range(self.n_layer - 1)

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        tokens = []
        for piece in _PIECES.findall(text):
            if piece in MARKUP and not special:
                tokens += [self._id(c) for c in piece]
            else:
                tokens.append(self._id(piece))
        return tokens

    def detokenize(self, tokens: Sequence[int]) -> str:
        return "".join(self._pieces[t] for t in tokens)

    def is_plain_text(self, text: str) -> bool:
        return not any(markup in text for markup in MARKUP)

    def reply_header_length(self) -> int:
        return len(self.tokenize("<|im_end|>\n<|im_start|>assistant\n", special=True))

    def chat_tokens(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True,
                    known: dict[str, list[int]] | None = None) -> list[int]:
        known = {} if known is None else known
        tokens: list[int] = []
        for message in messages:
            tokens += self.tokenize(f"<|im_start|>{message['role']}\n", special=True)
            if message["content"] not in known:
                known[message["content"]] = self.tokenize(message["content"])
            tokens += known[message["content"]]
            tokens += self.tokenize("<|im_end|>\n", special=True)
        if add_generation_prompt:
            tokens += self.tokenize("<|im_start|>assistant\n", special=True)
        return tokens

    def _id(self, piece: str) -> int:
        if piece not in self._ids:
            if len(self._pieces) == N_VOCAB:
                raise RuntimeError("the fake engine's vocabulary is full")
            self._ids[piece] = len(self._pieces)
            self._pieces.append(piece)
        return self._ids[piece]

    # -- evaluation -------------------------------------------------------------------------------

    def next_token_logits(self, tokens: Sequence[int], keep_prefix: int = 0) -> np.ndarray:
        self.tokens_evaluated = len(tokens) - keep_prefix
        return self._logits(tokens)

    def evaluate_many(self, prompts: Sequence[Sequence[int]], keep_prefix: int = 0, *, layers: Sequence[int] = (),
                      logits: bool = True) -> list[Evaluated]:
        self.tokens_evaluated = sum(len(p) - keep_prefix for p in prompts)
        return [Evaluated(self._logits(p) if logits else None,
                          {layer: np.zeros((len(p) - keep_prefix, N_EMBD), dtype=np.float32) for layer in layers})
                for p in prompts]

    def sequence_logprob(self, prefix: Sequence[int], continuation: Sequence[int], keep_prefix: int = 0) -> float:
        logits = self._logits(prefix)
        return float(logits[continuation[0]] - np.log(np.exp(logits).sum()))

    def constrained_choice(self, tokens: Sequence[int], grammar: str, max_tokens: int = 32,
                           keep_prefix: int = 0) -> str:
        literals = grammar_literals(grammar)
        logits = self._logits(tokens)
        return max(literals, key=lambda literal: (logits[self.tokenize(literal)[0]], -literals.index(literal)))

    def _logits(self, tokens: Sequence[int]) -> np.ndarray:
        logits = np.zeros(N_VOCAB, dtype=np.float32)
        text = self._last_user_text(tokens).lower()
        negative = any(cue in text for cue in NEGATIVE_CUES)
        question = any(cue in text for cue in QUESTION_CUES)
        for word, score in (("negative", negative), ("positive", not negative), ("question", question),
                            ("review", not question)):
            if word in self._ids:
                logits[self._ids[word]] = 4.0 if score else 0.0
        return logits

    def _last_user_text(self, tokens: Sequence[int]) -> str:
        text = self.detokenize(tokens)
        start = text.rfind("<|im_start|>user\n")
        return text[start:].split("<|im_end|>")[0] if start >= 0 else text

    # -- generation -------------------------------------------------------------------------------

    def reply_budget(self, tokens: Sequence[int], sampling: SamplingParams) -> int:
        from edgeqwen.errors import ContextOverflowError

        budget = min(sampling.max_tokens, self.n_ctx - len(tokens))
        if budget <= 0:
            raise ContextOverflowError(f"prompt of {len(tokens)} tokens leaves no room in n_ctx {self.n_ctx}")
        return budget

    def reply_pieces(self, tokens: Sequence[int]) -> list[str]:
        """The whole reply this engine gives after `tokens`, as its token pieces."""
        words = self._last_user_text(tokens).split("\n", 1)[-1].split()[:6]
        return _PIECES.findall(f"Reply {len(tokens)}: " + " ".join(words))

    def stream(self, tokens: Sequence[int], sampling: SamplingParams, keep_prefix: int = 0) -> Iterator[str]:
        budget = self.reply_budget(tokens, sampling)
        self.samplings.append(sampling)
        pieces = self.reply_pieces(tokens)
        self.last_generation = generation = Generation(prompt_tokens=len(tokens))
        self.tokens_evaluated = len(tokens) - keep_prefix
        for piece in pieces[:budget]:
            generation.tokens += 1
            yield piece
        generation.finish_reason = "length" if len(pieces) > budget else "stop"

    def bare_decode_rate(self, tokens: Sequence[int], n_tokens: int, streams: int = 1) -> float:
        return 1000.0 * streams

    def streams(self, slots: int) -> FakeStreams:
        return FakeStreams(self, slots)


@dataclass
class _Slot:
    pieces: list[str]
    generation: Generation
    budget: int


class FakeStreams:
    """Chat slots of the fake engine: every step gives each active reply its next piece."""

    def __init__(self, engine: FakeEngine, slots: int) -> None:
        self.slots = slots
        self._engine = engine
        self._active: dict[int, _Slot] = {}

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def free(self) -> int:
        return self.slots - len(self._active)

    def start(self, tokens: Sequence[int], sampling: SamplingParams, keep_prefix: int = 0) -> int | None:
        if not self.free:
            return None
        budget = self._engine.reply_budget(tokens, sampling)
        self._engine.samplings.append(sampling)
        handle = min(set(range(self.slots)) - set(self._active))
        self._active[handle] = _Slot(self._engine.reply_pieces(tokens), Generation(prompt_tokens=len(tokens)), budget)
        return handle

    def step(self) -> dict[int, Piece]:
        pieces = {}
        for handle, slot in list(self._active.items()):
            done = slot.generation.tokens == min(slot.budget, len(slot.pieces))
            if done:
                slot.generation.finish_reason = "length" if len(slot.pieces) > slot.budget else "stop"
                del self._active[handle]
                pieces[handle] = Piece("", slot.generation.finish_reason, slot.generation)
                continue
            text = slot.pieces[slot.generation.tokens]
            slot.generation.tokens += 1
            pieces[handle] = Piece(text)
        return pieces

    def close(self, handle: int) -> Generation | None:
        slot = self._active.pop(handle, None)
        return slot.generation if slot else None

    def close_all(self) -> None:
        self._active.clear()
