"""Prompts that fit: an input cleaned, the role's messages in the model's chat template, trimmed to n_ctx.

Too long an input is cut at its tail; old conversation turns are dropped first. The role's fixed
prefix (system prompt, examples, the user turn up to the input) is found here so the engine can keep it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .engine import EngineLike, common_prefix_length
from .errors import InputError
from .roles import Message, Role
from .text import script_language

MIN_REPLY_TOKENS = 16  # a chat prompt is truncated rather than leave less room than this
LANGUAGE_PROBES = {"zh": ("甲", "乙"), "en": ("A", "B"), None: ("1", "2")}  # unlike inputs in one script


@dataclass(frozen=True)
class FittedPrompt:
    tokens: list[int]
    history: list[Message]
    truncated: bool
    fixed: int = 0  # leading tokens that are the role's fixed prefix, worth keeping in the cache


def fixed_prefix(engine: EngineLike, role: Role, text: str | None = None) -> list[int]:
    """Tokens every prompt of the role starts with: system prompt, examples, and the new user turn up to the input.

    Found as what the prompts for two unlike inputs share, so the template's own tokens before the
    input (e.g. "<|im_start|>user\nText:") are kept in the cache too. For a role with a system prompt
    per language (or examples per language), the inputs are in `text`'s script, so they get the same prompt as `text`.
    """
    probes = ("A", "乙") if not role.by_language else LANGUAGE_PROBES[script_language(text or "")]
    first, second = (engine.chat_tokens(role.messages(probe)) for probe in probes)
    return first[: common_prefix_length(first, second)]


def fit_prompt(
    engine: EngineLike, role: Role, text: str, history: Sequence[Message] = (), reserve: int = 1,
    prefix: Sequence[int] = (),
) -> FittedPrompt:
    """Tokens for `text` after `history` that leave `reserve` tokens free: oldest turns go first, then the
    text's tail."""
    fitted = _fit(engine, role, text, list(history), reserve)
    prefix = list(prefix)
    fixed = len(prefix) if prefix and fitted.tokens[: len(prefix)] == prefix else 0
    return FittedPrompt(fitted.tokens, fitted.history, fitted.truncated, fixed)


def _fit(engine: EngineLike, role: Role, text: str, history: list[Message], reserve: int) -> FittedPrompt:
    history, tokens = _drop_old_turns(engine, role, text, history, reserve)
    limit = engine.n_ctx - min(reserve, MIN_REPLY_TOKENS)
    if len(tokens) <= limit:
        return FittedPrompt(tokens, history, truncated=False)
    text_tokens = engine.tokenize(text)
    fixed = len(tokens) - len(text_tokens)
    room = limit - fixed - 4  # re-tokenizing the cut text may merge differently
    if room <= 0:
        raise InputError(f"role '{role.name}' needs {fixed} tokens of fixed prompt; n_ctx {engine.n_ctx} is too small")
    tokens = engine.chat_tokens(role.messages(engine.detokenize(text_tokens[:room]), history))
    return FittedPrompt(tokens, history, truncated=True)


def _drop_old_turns(
    engine: EngineLike, role: Role, text: str, history: list[Message], reserve: int
) -> tuple[list[Message], list[int]]:
    """The history without as few of its oldest turn pairs as leave `reserve` tokens free (all of them
    if nothing else does), and the prompt's tokens. Each message is tokenized once, however many
    cuts are tried: a prompt gets shorter as turns are dropped, so the fewest is found by bisection."""
    known: dict[str, list[int]] = {}

    def prompt(drop: int) -> list[int]:
        return engine.chat_tokens(role.messages(text, history[2 * drop :]), known=known)

    tokens = prompt(0)
    if len(tokens) + reserve <= engine.n_ctx or not history:
        return history, tokens
    low, high = 0, (len(history) + 1) // 2  # dropping `low` pairs is too few; `high` (none left) is the last resort
    fits: dict[int, list[int]] = {}
    while high - low > 1:
        middle = (low + high) // 2
        candidate = prompt(middle)
        if len(candidate) + reserve <= engine.n_ctx:
            high, fits[middle] = middle, candidate
        else:
            low = middle
    return history[2 * high :], fits.get(high) or prompt(high)
